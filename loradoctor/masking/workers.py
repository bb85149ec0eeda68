"""The user's dataset code against the oracle, in shares: chunks of records, or worker processes.

`compare_dataset` (compare.py) asks the user's code for every sample in this process. Here the
records are cut into chunks of `CHUNK`; with `workers > 1` the chunks go round-robin to that
many processes, each of which builds the user's dataset object itself (a class is constructed
with the tokenizer and the data path, as in one process; a labelling function is simply
called) and its own oracle, and asks for the items of its chunks by their index. The parent
reads the file, numbers the records (item i is the file's record i), and merges the chunks'
measurements in file order (`shares.Share`), so the report is the one a single process gives.

Processes are forked where the platform allows (they start with the tokenizer and the user's
module already loaded); elsewhere they are spawned and load both again from their paths.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .compare import feed_rows
from .oracle import Oracle
from .scan import CHUNK, DataStats, pool_in_order
from .shares import RecordingComparer, Share
from .structure import StructureOracle
from ..inputs.user_dataset import UserData


@dataclass
class Recipe:
    """What a worker needs to build its own oracle and the user's dataset object."""

    obj: Any  # the class, function or instance (None under spawn when `spec` names it)
    spec: str
    data: Path | None
    max_length: int | None
    markers: list
    show: int
    n_items: int | None
    facts: Any  # the parent's TemplateFacts, learned before the user's code ran
    tokenizer_dir: str | None = None
    tokenizer: Any = None  # a live tokenizer (the Python API) when there is no directory
    structure: bool = True


_STATE: dict = {}  # per process: the recipe, and once built the oracle, structure and user
START_METHOD: str | None = None  # "fork" where the platform has it, else "spawn"


def _build(recipe: Recipe) -> None:
    """Build this process's oracle and the user's dataset object (once)."""
    if "user" in _STATE:
        return
    oracle = _STATE.get("oracle")
    if oracle is None:  # spawned: load our own tokenizer
        tok = recipe.tokenizer
        if tok is None:
            from ..inputs.pretrained import load_tokenizer
            tok = load_tokenizer(recipe.tokenizer_dir)
        oracle = Oracle(tok, recipe.facts)
    obj = recipe.obj
    if obj is None:
        from ..inputs.specs import load_spec
        obj = load_spec(recipe.spec)
    _STATE["oracle"] = oracle
    _STATE["structure"] = StructureOracle(oracle) if recipe.structure else None
    _STATE["user"] = UserData(obj, recipe.spec, oracle.tokenizer, recipe.data,
                              recipe.max_length)
    _STATE["recipe"] = recipe


def _init_worker(recipe: Recipe | None) -> None:
    _build(recipe if recipe is not None else _STATE["recipe"])


def process_chunk(chunk: list[tuple[int, int, str, list[dict]]]) -> Share:
    """(index, line, location, messages) records: the oracle and the user's items compared."""
    recipe, oracle, user = _STATE["recipe"], _STATE["oracle"], _STATE["user"]
    comparer = RecordingComparer(oracle.facts, user, recipe.markers, oracle.tokenizer,
                                 recipe.show, _STATE["structure"])
    comparer.result.n_items = recipe.n_items
    stats = DataStats()
    samples = oracle.samples([messages for *_, messages in chunk])
    for (index, line, location, messages), sample in zip(chunk, samples):
        stats.add(line, sample, None)
        comparer.add(line, location, user.item(index, messages, location), sample)
    return Share.of(comparer, stats)


def chunks(records: Iterable, start: int, n_items: int | None, counted: list[int],
           size: int = CHUNK):
    """The records to compare, as chunks of (index, line, location, messages).

    Record i of the file is item `start + i` of the user's dataset (`start`: the shard's first
    record); unreadable records keep their place, and records past the dataset's length are
    not asked for, as in one process. `counted[0]` counts every record seen.
    """
    batch = []
    index = start
    for rec in records:
        counted[0] += 1
        if rec.messages is not None and (n_items is None or index < n_items):
            batch.append((index, rec.line, rec.location, rec.messages))
            if len(batch) >= size:
                yield batch
                batch = []
        index += 1
    if batch:
        yield batch


def compare_in_shares(user: UserData, records: Iterable, oracle: Oracle, markers: list,
                      show: int, structure: StructureOracle | None, *, start: int = 0,
                      workers: int = 1, recipe: Recipe | None = None, advance=lambda n=1: None,
                      chunk_size: int = CHUNK) -> Share:
    """Compare the user's samples with the oracle chunk by chunk; merged in file order."""
    n_items = len(user) if user.kind == "class" else None
    first = RecordingComparer(oracle.facts, user, markers, oracle.tokenizer, show, structure)
    first.result.n_items = n_items
    total = Share.of(first)
    counted = [0]
    if workers <= 1 or recipe is None:
        _STATE.clear()
        _STATE.update(recipe=recipe or Recipe(user.obj, user.spec, None, user.max_length,
                                              markers, show, n_items, oracle.facts),
                      oracle=oracle, structure=structure, user=user)
        try:
            for chunk in chunks(records, start, n_items, counted, chunk_size):
                total.merge(process_chunk(chunk))
                advance(len(chunk))
        finally:
            _STATE.clear()
    else:
        _in_pool(total, recipe, oracle, workers, chunks(records, start, n_items, counted,
                                                        chunk_size), advance)
    total.comparison.n_records = counted[0]
    return total


def _in_pool(total: Share, recipe: Recipe, oracle: Oracle, workers: int, work, advance) -> None:
    methods = multiprocessing.get_all_start_methods()
    mp = multiprocessing.get_context(START_METHOD or ("fork" if "fork" in methods else "spawn"))
    # A fork after the Rust tokenizer used its thread pool would make it warn and fall back to
    # one thread; the processes are the parallelism now.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _STATE.clear()
    forked = mp.get_start_method() == "fork"
    if forked:
        _STATE.update(recipe=recipe, oracle=oracle)
    else:  # spawned processes get the recipe pickled, the class named by its SPEC
        recipe = _picklable(recipe)
    try:
        with mp.Pool(workers, _init_worker, (None if forked else recipe,)) as pool:
            pool_in_order(pool, process_chunk, work, workers, total.merge, advance)
    finally:
        _STATE.clear()


def _picklable(recipe: Recipe) -> Recipe:
    """Under spawn a class imported from a file by SPEC is loaded again from its SPEC."""
    from dataclasses import replace
    module = getattr(recipe.obj, "__module__", "") or ""
    if module.startswith("_loradoctor_user_") and ":" in recipe.spec:
        return replace(recipe, obj=None)
    return recipe


def rows_in_share(rows: Iterable, structure: StructureOracle, show: int, advance=lambda n=1: None,
                  user: UserData | None = None, markers: list = ()) -> Share:
    """Token rows against their own structure, as `compare.compare_rows` does, with the views
    logged for merging (a `--shard` run). A shard without a readable row is not an error
    here: only the merged shards can say the data holds none."""
    oracle = structure.oracle
    comparer = RecordingComparer(oracle.facts, user, list(markers), oracle.tokenizer, show,
                                 structure)
    feed_rows(comparer, rows, advance)
    return Share.of(comparer)


def compare_for(ctx, user: UserData, oracle: Oracle, markers: list, show: int, advance,
                structure: StructureOracle | None):
    """A run's comparison in shares (`--workers N`, `--shard I/N`): (Comparison, DataStats).

    The merged share is kept on the context (`masking.share`) with its view log, which a
    `--shard` run's partial report carries for `merge`.
    """
    from .shares import view_decoder
    from ..inputs.user_dataset import is_instance

    data = ctx.data
    if data is None and ctx.records_given is not None and not is_instance(ctx.user_dataset):
        data = ctx._records_file()  # the class reads a path: the same file as in one process
    recipe = Recipe(ctx.user_dataset, user.spec, data, ctx.max_length, markers, show,
                    len(user) if user.kind == "class" else None, oracle.facts,
                    tokenizer_dir=ctx.tokenizer_path,
                    tokenizer=ctx.tokenizer if ctx.tokenizer_path is None else None,
                    structure=structure is not None)
    share = compare_in_shares(user, ctx.records(), oracle, markers, show, structure,
                              start=ctx.span[0], workers=ctx.workers, recipe=recipe,
                              advance=advance)
    share.finish(view_decoder(oracle.tokenizer))
    ctx.memo("masking.share", lambda: share)
    return share.comparison, share.stats


def rows_for(ctx, structure: StructureOracle, show: int, advance, user: UserData | None,
             markers: list):
    """A `--shard` run's token rows: the comparison, its share kept for the partial report."""
    from .shares import view_decoder

    share = rows_in_share(ctx.rows(), structure, show, advance, user, markers)
    share.finish(view_decoder(structure.oracle.tokenizer))
    ctx.memo("masking.share", lambda: share)
    return share.comparison
