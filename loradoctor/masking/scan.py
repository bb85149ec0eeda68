"""The streaming pass over a data file: render, tokenize and locate every conversation once.

Records are read as a stream and handled in chunks (one batched tokenizer call per chunk), and
only counts plus the first `MAX_LINES` line numbers of each kind of problem are kept, so memory
stays flat in the number of records. With `workers > 1` the chunks go to that many processes
(forked where the platform allows, so each starts with the tokenizer already loaded); their
partial statistics are merged in file order.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from .oracle import Oracle, OracleSample, Truth, rendered_texts

MAX_LINES = 1000  # line numbers kept per kind of problem; the count is always exact
MAX_ERRORS = 20  # distinct render error messages kept
CHUNK = 256  # records per batched tokenizer call / per task for a worker
LENGTH_BIN = 8  # token lengths are histogrammed in bins of this many tokens


@dataclass
class Lines:
    """An exact count, with the first `MAX_LINES` line numbers where it happened."""

    count: int = 0
    lines: list[int] = field(default_factory=list)

    def add(self, line: int) -> None:
        self.count += 1
        if len(self.lines) < MAX_LINES:
            self.lines.append(line)

    def add_if(self, happened: bool, line: int) -> None:
        """`add(line)` when `happened`."""
        if happened:
            self.add(line)

    def merge(self, other: "Lines") -> None:
        self.count += other.count
        self.lines.extend(other.lines[:MAX_LINES - len(self.lines)])

    def __bool__(self) -> bool:
        return self.count > 0


@dataclass
class DataStats:
    """What the oracle measured on the data and tokenizer alone."""

    records: int = 0  # readable conversations seen
    rendered: int = 0
    tokens: int = 0
    assistant_tokens: int = 0
    turns: int = 0
    longest: int = 0
    longest_line: int | None = None
    lengths: Counter = field(default_factory=Counter)  # bin -> records
    render_errors: dict[str, Lines] = field(default_factory=dict)
    no_assistant: Lines = field(default_factory=Lines)  # nothing to supervise at all
    unlocated: Lines = field(default_factory=Lines)  # an assistant turn the oracle cannot find
    rewritten: Lines = field(default_factory=Lines)  # assistant content not rendered verbatim
    dropped: Lines = field(default_factory=Lines)  # a system or user message not rendered at all
    generation_mismatch: Lines = field(default_factory=Lines)
    first_mismatch: str | None = None
    eot_missing: Lines = field(default_factory=Lines)  # a turn not closed by end-of-turn
    straddle: Lines = field(default_factory=Lines)  # a reply's first token merges with header
    straddle_turns: int = 0
    cut_all: Lines = field(default_factory=Lines)  # --max-length cuts every assistant token
    cut_part: Lines = field(default_factory=Lines)  # --max-length cuts some
    cut_tokens: int = 0
    methods: Counter = field(default_factory=Counter)

    def add(self, line: int, sample: OracleSample | Truth, max_length: int | None) -> None:
        self.records += 1
        if isinstance(sample, Truth):
            key = sample.error or "unknown error"
            if key not in self.render_errors and len(self.render_errors) >= MAX_ERRORS:
                key = "other errors"
            self.render_errors.setdefault(key, Lines()).add(line)
            return
        truth = sample.truth
        n = sample.n_tokens
        self.rendered += 1
        self.tokens += n
        self.lengths[n // LENGTH_BIN] += 1
        if n > self.longest:
            self.longest, self.longest_line = n, line
        self.methods[truth.method] += 1
        supervised = sample.supervised
        self.assistant_tokens += supervised
        self.turns += len(sample.ranges)
        self.unlocated.add_if(truth.unlocated, line)
        self.rewritten.add_if(truth.rewritten, line)
        self.dropped.add_if(truth.dropped, line)
        if truth.generation_mismatch:
            self.generation_mismatch.add(line)
            self.first_mismatch = self.first_mismatch or truth.generation_mismatch
        self.no_assistant.add_if(supervised == 0 and not truth.unlocated, line)
        self.eot_missing.add_if(not all(sample.eot_ok), line)
        if sample.straddles:
            self.straddle.add(line)
            self.straddle_turns += len(sample.straddles)
        if max_length is not None and supervised:
            cut = sum(max(0, t1 - max(t0, max_length)) for t0, t1 in sample.ranges)
            if cut:
                (self.cut_all if cut == supervised else self.cut_part).add(line)
                self.cut_tokens += cut

    def merge(self, other: "DataStats") -> None:
        for name in ("records", "rendered", "tokens", "assistant_tokens", "turns", "cut_tokens",
                     "straddle_turns"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.longest > self.longest:
            self.longest, self.longest_line = other.longest, other.longest_line
        self.lengths.update(other.lengths)
        self.methods.update(other.methods)
        for key, lines in other.render_errors.items():
            if key not in self.render_errors and len(self.render_errors) >= MAX_ERRORS:
                key = "other errors"
            self.render_errors.setdefault(key, Lines()).merge(lines)
        for name in ("no_assistant", "unlocated", "rewritten", "dropped", "generation_mismatch",
                     "eot_missing", "straddle", "cut_all", "cut_part"):
            getattr(self, name).merge(getattr(other, name))
        self.first_mismatch = self.first_mismatch or other.first_mismatch

    @property
    def render_failures(self) -> int:
        return sum(lines.count for lines in self.render_errors.values())

    def percentile(self, q: float) -> int:
        """The q-th percentile token length (upper edge of its bin)."""
        total = sum(self.lengths.values())
        if not total:
            return 0
        seen = 0
        for b in sorted(self.lengths):
            seen += self.lengths[b]
            if seen >= q * total:
                return min(self.longest, (b + 1) * LENGTH_BIN - 1)
        return self.longest

    def summary(self) -> dict:
        return {"conversations": self.records, "rendered": self.rendered, "tokens": self.tokens,
                "assistant_tokens": self.assistant_tokens, "assistant_turns": self.turns,
                "longest_tokens": self.longest, "p95_tokens": self.percentile(0.95),
                "render_failures": self.render_failures,
                "oracle_methods": dict(self.methods)}


def process(oracle: Oracle, batch: list[tuple[int, list[dict]]],
            max_length: int | None) -> DataStats:
    """One chunk: render, tokenize in one batched call, locate, measure."""
    stats = DataStats()
    samples = oracle.samples([messages for _, messages in batch])
    for (line, _), sample in zip(batch, samples):
        stats.add(line, sample, max_length)
    return stats


def overlapped(oracle: Oracle, batches: Iterable, max_length: int | None, stats: DataStats,
               advance) -> None:
    """One process, two halves of the work at once: each chunk's batched encoding runs in a
    thread (the Rust tokenizer releases the GIL) while this thread reads and renders the next
    chunk and measures the last one. Only that thread touches the tokenizer, one call at a
    time; rendering uses the template alone. Same statistics as `process` chunk by chunk."""
    from concurrent.futures import ThreadPoolExecutor

    def finish(batch, truths, encoding) -> None:
        samples = oracle.assemble(truths, encoding.result())
        for (line, _), sample in zip(batch, samples):
            stats.add(line, sample, max_length)
        advance(len(batch))

    pending = None
    with ThreadPoolExecutor(1, thread_name_prefix="loradoctor-encode") as pool:
        for batch in batches:
            truths = [oracle.truth(messages) for _, messages in batch]
            encoding = pool.submit(oracle.encode, rendered_texts(truths))
            if pending is not None:
                finish(*pending)
            pending = (batch, truths, encoding)
        if pending is not None:
            finish(*pending)


def chunks(records: Iterable, size: int | None = None) -> Iterator[list[tuple[int, list[dict]]]]:
    """Readable conversations as `(line, messages)` lists of `size` (unreadable ones: LD100)."""
    size = size or CHUNK
    batch = []
    for rec in records:
        if rec.messages is None:
            continue
        batch.append((rec.line, rec.messages))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def count_lines(path: Path) -> int:
    """Lines in a file (an upper bound on its records), for the progress bar."""
    n = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            n += block.count(b"\n")
    return n


# --- several processes -----------------------------------------------------------------

_STATE: dict = {}  # the worker's oracle and max length (inherited when forked)


def _init_worker(tokenizer_dir: str | None, max_length: int | None) -> None:
    if "oracle" not in _STATE:  # spawned, not forked: load our own tokenizer
        from ..inputs.pretrained import load_tokenizer
        _STATE["oracle"] = Oracle(load_tokenizer(tokenizer_dir))
    _STATE["max_length"] = max_length


def _work(batch):
    return process(_STATE["oracle"], batch, _STATE["max_length"])


def pool_in_order(pool, fn, chunks: Iterable, workers: int, merge, advance) -> None:
    """`merge(fn(chunk))` for every chunk, run in `pool`, merged in order; at most
    2 x workers chunks in flight, so memory stays flat however long the input."""
    pending: deque = deque()
    for chunk in chunks:
        pending.append((len(chunk), pool.apply_async(fn, (chunk,))))
        while len(pending) >= 2 * workers:
            n, result = pending.popleft()
            merge(result.get())
            advance(n)
    while pending:
        n, result = pending.popleft()
        merge(result.get())
        advance(n)


def scan(oracle: Oracle, records: Iterable, max_length: int | None = None, workers: int = 1,
         advance=lambda n=1: None, tokenizer_dir: str | None = None) -> DataStats:
    """Measure every readable conversation in `records` (streamed, chunked)."""
    stats = DataStats()
    if workers <= 1:
        overlapped(oracle, chunks(records), max_length, stats, advance)
        return stats
    methods = multiprocessing.get_all_start_methods()
    mp = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    # A fork after the Rust tokenizer used its thread pool would make it warn on stderr and
    # fall back to one thread; the processes are the parallelism now.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _STATE.clear()
    if mp.get_start_method() == "fork":
        _STATE["oracle"] = oracle
    try:
        with mp.Pool(workers, _init_worker, (tokenizer_dir, max_length)) as pool:
            pool_in_order(pool, _work, chunks(records), workers, stats.merge, advance)
    finally:
        _STATE.clear()
    return stats
