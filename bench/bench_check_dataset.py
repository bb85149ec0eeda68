"""Benchmark: `check-dataset` (without --dataset) against a bare `apply_chat_template` pass.

Generates N deterministic multi-turn conversations (seeded), writes them to a temporary JSONL
file, and measures in one run, with the real Qwen3 tokenizer:

  (a) a bare loop of `tokenizer.apply_chat_template(conv, tokenize=True)` over the records
      (already parsed in memory: the strictest baseline), and the same loop reading and
      parsing the JSONL file as it goes;
  (b) `loradoctor check-dataset DATA --tokenizer TOK` through the engine, in process, with
      every dataset rule selected, for each `--workers` value;

and prints the time ratio b/a (target <= 1.5) and the throughput (best of `--repeat`
interleaved runs, so that load from other processes on a shared machine hurts both sides).
Then it measures peak memory of the engine run at N and 2N records, as the peak of Python
allocations (tracemalloc) and as the peak RSS of a fresh process, to show memory is flat in
the number of records.

    .venv/bin/python bench/bench_check_dataset.py [--records 20000] [--workers 1,2]

With `--dataset SPEC` it also times (c) `check-dataset --dataset SPEC` (the user's labelling
code asked for every sample and compared with the oracle) for each `--workers` value: records
per second with 1 and 2 processes (each worker builds the user's dataset object itself).

With `--sizes 20000,200000,1000000` it measures instead of N and 2N, in a fresh process per
size, the peak RSS and the records per second of `check-dataset` on a file of that many
records (`--format parquet` writes the records as parquet, in row groups, without ever
holding them all; `--size-workers` and `--size-dataset` choose the run), to show memory flat
in the number of records. The peak RSS of the worker processes is the largest of them.

Tokenizer loading is outside every timer (both sides use a loaded tokenizer). The CLI runs
with TOKENIZERS_PARALLELISM=false, and so does this script unless `--rust-threads` is given.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = ("the a model learns low rank adapter weights frozen base gradient loss token chat "
         "template assistant user reply question answer quickly slowly because therefore "
         "however data training step batch matrix update memory speed layer attention head "
         "value key query output input small large simple careful").split()
SYSTEMS = ["You are a helpful assistant.", "You are a concise assistant. Answer briefly.",
           "You are Pip, a tiny robot with a big grin.", ""]


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    return " ".join(words).capitalize() + rng.choice([".", "?", "!", "."])


def conversation(rng: random.Random) -> dict:
    messages = []
    system = rng.choice(SYSTEMS)
    if system:
        messages.append({"role": "system", "content": system})
    for _ in range(rng.randint(1, 4)):
        messages.append({"role": "user", "content": " ".join(
            sentence(rng, 4, 18) for _ in range(rng.randint(1, 3)))})
        reply = " ".join(sentence(rng, 5, 24) for _ in range(rng.randint(1, 5)))
        if rng.random() < 0.1:
            reply = "Here is the list:\n" + "\n".join(f"- {sentence(rng, 2, 6)}" for _ in range(3))
        messages.append({"role": "assistant", "content": reply})
    # the record shapes the contract accepts, mixed
    if rng.random() < 0.5:
        return {"messages": messages}
    return {"conversations": messages}


def write_data(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for _ in range(n):
            fh.write(json.dumps(conversation(rng), ensure_ascii=False) + "\n")


def read_messages(path: Path):
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            yield rec.get("messages") or rec.get("conversations")


def bare_loop(tokenizer, convs) -> int:
    tokens = 0
    for conv in convs:
        tokens += len(tokenizer.apply_chat_template(conv, tokenize=True)["input_ids"])
    return tokens


def write_parquet(path: Path, n: int, seed: int = 0, group: int = 10000) -> None:
    """The same records as `write_data`, as parquet, one row group at a time (never all held)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    writer = None
    try:
        for start in range(0, n, group):
            recs = [conversation(rng) for _ in range(min(group, n - start))]
            # one column per shape, null where a record has the other one (as `datasets` does)
            table = pa.Table.from_pylist([{"messages": r.get("messages"),
                                           "conversations": r.get("conversations")}
                                          for r in recs])
            if writer is None:
                writer = pq.ParquetWriter(str(path), table.schema)
            writer.write_table(table, row_group_size=group)
    finally:
        if writer is not None:
            writer.close()


def engine_run(path: Path, tokenizer_dir: Path, workers: int, tokenizer=None, dataset=None):
    from loradoctor import engine, registry
    from loradoctor.context import DatasetContext

    ctx = DatasetContext(path, tokenizer_dir, dataset, workers=workers)
    if tokenizer is not None:
        ctx.memo("tokenizer", lambda: tokenizer)  # the same loaded tokenizer as the baseline
    ctx.validate_inputs()
    start = time.perf_counter()
    report = engine.run("check-dataset", registry.rules_for("dataset"), ctx)
    return time.perf_counter() - start, report


def peak_python_bytes(path: Path, tokenizer_dir: Path, tokenizer) -> int:
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    engine_run(path, tokenizer_dir, 1, tokenizer)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - base


def peak_rss_child(path: Path, tokenizer_dir: Path) -> int:
    """Peak RSS (KiB) of a fresh process that loads the tokenizer and runs the engine."""
    code = ("import resource, sys; sys.path.insert(0, %r); "
            "from bench.bench_check_dataset import engine_run; from pathlib import Path; "
            "engine_run(Path(%r), Path(%r), 1); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
            % (str(ROOT), str(path), str(tokenizer_dir)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    return int(out.stdout.strip().splitlines()[-1])


def run_child(path: Path, tokenizer_dir: Path, workers: int, dataset: str | None) -> dict:
    """A fresh process loads the tokenizer and runs the engine: its time, its peak RSS and the
    largest peak RSS among the worker processes it started (KiB)."""
    code = ("import json, resource, sys; sys.path.insert(0, %r); "
            "from bench.bench_check_dataset import engine_run; from pathlib import Path; "
            "t, r = engine_run(Path(%r), Path(%r), %d, dataset=%r); "
            "print(json.dumps({'seconds': t, 'exit': r.exit_code, "
            "'records': r.summary.get('records'), "
            "'self_kib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
            "'workers_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
            % (str(ROOT), str(path), str(tokenizer_dir), workers, dataset))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def sizes_run(args, tok_dir: Path, tmp: str) -> None:
    """Peak memory and records/s at each of `--sizes`, one fresh process each."""
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    what = f"--workers {args.size_workers}" + (f" --dataset {args.size_dataset}"
                                               if args.size_dataset else "")
    print(f"check-dataset {what} on {args.format} files (one fresh process per size):")
    print(f"{'records':>10} {'file MB':>8} {'time s':>8} {'records/s':>10} "
          f"{'peak RSS MiB':>13} {'worker peak MiB':>16}")
    for n in sizes:
        data = Path(tmp) / f"chats_{n}.{args.format}"
        (write_parquet if args.format == "parquet" else write_data)(data, n)
        r = run_child(data, tok_dir, args.size_workers, args.size_dataset)
        assert r["records"] == n, r
        print(f"{n:>10} {data.stat().st_size / 1e6:>8.1f} {r['seconds']:>8.1f} "
              f"{n / r['seconds']:>10.0f} {r['self_kib'] / 1024:>13.0f} "
              f"{r['workers_kib'] / 1024:>16.0f}", flush=True)
        data.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--repeat", type=int, default=2,
                        help="interleaved repeats; the best time of each is reported")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory runs")
    parser.add_argument("--rust-threads", action="store_true",
                        help="let the Rust tokenizer use its thread pool (the CLI does not)")
    parser.add_argument("--dataset", metavar="SPEC",
                        help="also time check-dataset --dataset SPEC for each --workers value")
    parser.add_argument("--sizes", metavar="N,N,...",
                        help="instead of everything else: peak memory and records/s at these "
                             "sizes, one fresh process each")
    parser.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl",
                        help="the file format of --sizes runs")
    parser.add_argument("--size-workers", type=int, default=1, metavar="N")
    parser.add_argument("--size-dataset", metavar="SPEC")
    args = parser.parse_args()
    if not args.rust_threads:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    from transformers import AutoTokenizer

    from loradoctor import assets

    tok_dir = assets.qwen3_tokenizer_dir()
    if args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            sizes_run(args, tok_dir, tmp)
        return 0
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    n = args.records
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / f"chats_{n}.jsonl"
        write_data(data, n)
        convs = list(read_messages(data))
        turns = sum(sum(m["role"] == "assistant" for m in c) for c in convs)
        size_mb = data.stat().st_size / 1e6
        print(f"data: {n} conversations, {turns} assistant turns, {size_mb:.1f} MB "
              f"(Qwen3 tokenizer, TOKENIZERS_PARALLELISM="
              f"{os.environ.get('TOKENIZERS_PARALLELISM', 'unset')})")

        bare_loop(tokenizer, convs[:200])  # warm up the template cache
        workers = [int(x) for x in args.workers.split(",") if x.strip()]
        # Interleaved repeats, best of each: on a shared machine, load comes and goes.
        base = base_io = float("inf")
        engine_s = {w: float("inf") for w in workers}
        tokens = 0
        for _ in range(args.repeat):
            start = time.perf_counter()
            tokens = bare_loop(tokenizer, convs)
            base = min(base, time.perf_counter() - start)
            start = time.perf_counter()
            bare_loop(tokenizer, read_messages(data))
            base_io = min(base_io, time.perf_counter() - start)
            for w in workers:
                elapsed, report = engine_run(data, tok_dir, w, tokenizer)
                assert report.exit_code == 0, [f.message for f in report.findings]
                engine_s[w] = min(engine_s[w], elapsed)
        del convs
        print(f"(a) apply_chat_template(tokenize=True), parsed records: {base:7.2f} s  "
              f"{n / base:8.0f} conv/s  {tokens / base / 1e3:7.0f} k tok/s")
        print(f"(a') the same, reading and parsing the JSONL file:      {base_io:7.2f} s  "
              f"{n / base_io:8.0f} conv/s")
        for w, elapsed in engine_s.items():
            label = f"(b) check-dataset (engine, {w} worker{'s' if w > 1 else ''}):"
            print(f"{label:<56}{elapsed:7.2f} s  {n / elapsed:8.0f} conv/s  "
                  f"{tokens / elapsed / 1e3:7.0f} k tok/s   ratio b/a = {elapsed / base:.2f}"
                  f"  (b/a' = {elapsed / base_io:.2f})")
        print(f"(best of {args.repeat} interleaved runs each)")
        if args.dataset:
            code_s = {w: float("inf") for w in workers}
            for _ in range(args.repeat):
                for w in workers:
                    elapsed, report = engine_run(data, tok_dir, w, tokenizer, args.dataset)
                    assert report.exit_code == 0, [f.message for f in report.findings]
                    code_s[w] = min(code_s[w], elapsed)
            for w, elapsed in code_s.items():
                label = f"(c) check-dataset --dataset ({w} worker{'s' if w > 1 else ''}):"
                print(f"{label:<56}{elapsed:7.2f} s  {n / elapsed:8.0f} conv/s   "
                      f"x{code_s[workers[0]] / elapsed:.2f} vs {workers[0]} worker")

        if not args.no_memory:
            data2 = Path(tmp) / f"chats_{2 * n}.jsonl"
            write_data(data2, 2 * n)
            py1 = peak_python_bytes(data, tok_dir, tokenizer)
            py2 = peak_python_bytes(data2, tok_dir, tokenizer)
            print(f"peak Python allocations during the engine run: {py1 / 2**20:6.1f} MiB at "
                  f"{n} records, {py2 / 2**20:6.1f} MiB at {2 * n} (x{py2 / py1:.2f})")
            rss1 = peak_rss_child(data, tok_dir)
            rss2 = peak_rss_child(data2, tok_dir)
            print(f"peak RSS of a fresh process: {rss1 / 1024:6.0f} MiB at {n} records, "
                  f"{rss2 / 1024:6.0f} MiB at {2 * n} (x{rss2 / rss1:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
