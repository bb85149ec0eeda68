"""Ray: `check-dataset` shards as Ray tasks on a cluster, merged into the whole run's report.

    from loradoctor.integrations.ray import check_dataset
    report = check_dataset(data="/shared/sft/train-*.parquet", tokenizer="/shared/qwen3",
                           dataset="/shared/code/data.py:SFTDataset", shards=64)

Each task runs `check-dataset --shard i/N` (`loradoctor.api.prepare(..., shard=(i, N))`) where
Ray places it and returns its partial report, plain JSON; the driver merges them in shard order
(`loradoctor.shards.merge_partials`), so the Report is the one a single run over the whole data
gives. Paths must be readable from every node (a shared filesystem, or the same copy on each);
live objects (a tokenizer, a dataset class) travel to the tasks by Ray's own pickling.
`check_dataset` uses the Ray instance the caller started (`ray.init(...)`); without one it
connects to `address` (or `RAY_ADDRESS`), else starts a local instance, and shuts down only
what it started.

From a shell, on a running cluster (`ray job submit` tells the job the cluster's address):

    ray job submit --address http://HEAD:8265 -- python -m loradoctor.integrations.ray \\
        check-dataset /shared/sft.parquet --tokenizer /shared/qwen3 \\
        --dataset /shared/code/data.py:SFTDataset --shards 64 --json > report.json

(`--format github|sarif` and `--html PATH` as the CLI takes them.)

Needs `pip install 'loradoctor[ray]'`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any

from ..environment import OFFLINE, offline, quiet_libraries
from ..errors import InputError


def _ray():
    try:
        import ray
    except ImportError:
        raise InputError("the Ray integration needs ray: pip install 'loradoctor[ray]'") from None
    return ray


def _check_shard(i: int, n: int, kwargs: dict) -> dict:
    """One Ray task: the partial report of shard i of n (or the input error it met)."""
    offline()  # nothing from a hub, nothing chatty, on any node
    from .. import api
    from ..version import __version__
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the user's prints are not the report
            report = api.prepare(command="check-dataset", shard=(i, n), **kwargs).execute()
    except InputError as exc:
        return {"error": str(exc)}
    return {"partial": report.partial, "exit_code": report.exit_code,
            "version": __version__}


def check_dataset(*, shards: int, num_cpus: float = 1, address: str | None = None,
                  **kwargs: Any):
    """`check-dataset` over `shards` Ray tasks, merged: the Report of one whole run.

    `kwargs` are `loradoctor.check`'s data arguments (`data`, `tokenizer`, `dataset`,
    `max_length`, `tokenized`, `model`, `select`, `ignore`, `show`, `workers`, ...);
    `num_cpus` is what each task reserves (raise it with `workers=`).
    """
    return _run(shards, num_cpus, address, kwargs)[0]


def _run(shards: int, num_cpus: float, address: str | None, kwargs: dict):
    """(Report, title) of the merged shards."""
    from ..shards import merge_partials

    if shards < 1:
        raise InputError(f"shards {shards}: must be at least 1")
    if kwargs.get("fuzz"):
        raise InputError("fuzz: the generated conversations are not split across shards; run "
                         "--fuzz once with loradoctor check-dataset")
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        where = address or os.environ.get("RAY_ADDRESS") or None  # None: a local instance
        try:
            ray.init(address=where, include_dashboard=False,
                     runtime_env={"env_vars": dict(OFFLINE)})
        except (ConnectionError, ValueError) as exc:
            raise InputError(f"Ray cluster {where}: cannot connect ({exc})") from None
    try:
        task = ray.remote(num_cpus=num_cpus)(_check_shard)
        results = ray.get([task.remote(i, shards, kwargs) for i in range(1, shards + 1)])
    finally:
        if started:
            ray.shutdown()
    parts = []
    for i, result in enumerate(results, 1):
        if "error" in result:
            raise InputError(f"shard {i}/{shards}: {result['error']}")
        parts.append({**result["partial"], "_path": f"Ray task {i}/{shards}"})
    return merge_partials(parts)


# --- `python -m loradoctor.integrations.ray check-dataset ...` ----------------------------------


def main(argv: list[str] | None = None) -> int:
    from ..version import __version__
    from ..inputs import options
    from ..render_output import Output, write_report
    from ..render_places import run_sources

    own = argparse.ArgumentParser(prog="python -m loradoctor.integrations.ray", add_help=False)
    own.add_argument("--shards", type=int, required=True, metavar="N")
    own.add_argument("--address", metavar="ADDRESS",
                     help="the cluster (default: RAY_ADDRESS, else a local instance)")
    own.add_argument("--cpus-per-shard", type=float, default=1, metavar="C")
    ours, rest = own.parse_known_args(argv)
    if not rest or rest[0] != "check-dataset":
        own.error("usage: python -m loradoctor.integrations.ray check-dataset DATA --tokenizer "
                  "TOK [check-dataset options] --shards N [--address ADDRESS]")
    parser = argparse.ArgumentParser(prog="python -m loradoctor.integrations.ray check-dataset")
    options.add_arguments(parser, options.DATASET)
    options.add_output_arguments(parser)
    args = parser.parse_args(rest[1:])
    if args.shard:
        own.error("--shard: the shards are the Ray tasks here; give --shards N")
    with quiet_libraries():  # for this run only, as in `loradoctor.cli.main`
        # check-dataset's options, as `loradoctor check-dataset` passes them to the API.
        inputs = options.api_kwargs(options.DATASET, args)
        del inputs["command"], inputs["shard"]
        output = Output.from_args(args, run_sources(inputs))
        try:
            output.check_html_path()
            with contextlib.redirect_stdout(sys.stderr):  # Ray's and the tasks' chatter
                report, title = _run(ours.shards, ours.cpus_per_shard, ours.address, inputs)
            write_report(report, output, title=f"loradoctor {title} as Ray tasks",
                         version=__version__)
        except InputError as exc:
            print(f"loradoctor: error: {exc}", file=sys.stderr)
            return 2
        return report.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
