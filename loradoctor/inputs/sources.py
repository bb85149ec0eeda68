"""Where `check-dataset` reads its records and token rows from, as a stream.

DATA is a JSON Lines file (or a `.json` list: `records.read_records`), or a table:

- a parquet or arrow file, or a glob of them (`data/train-*.parquet`, the matches sorted);
- a folder written by `datasets`' `save_to_disk` (for a `DatasetDict` folder its `train`
  split, or its only one), or a folder of parquet or arrow files.

Tables are read with pyarrow one record batch (`BATCH` rows) at a time, and only the columns a
record or a token row is made of, so memory stays flat in the number of rows. Rows are
numbered from 1 across the whole input, and that number is the record's line in every count
and line list. A location names the file a row is in and its row there
(`part-0001.parquet:17`); for a `save_to_disk` folder it names the folder and the dataset's
row (`ds[16]` is `folder:17`), since that is how the user indexes it.

Live `datasets.Dataset` / `IterableDataset` objects (the Python API) are iterated in batches
the same way (`iter_live`), never listed into memory.

`--shard I/N` checks the records whose index lies in `shard_range(total, I, N)`: N contiguous
ranges whose sizes differ by one at most. Reading a range skips cheaply to it: a JSON Lines
file is scanned for line ends and only the shard's lines are parsed; a table reads only the
row groups or record batches that hold them.
"""

from __future__ import annotations

import bisect
import glob
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import InputError
from .records import normalise_record, parse_line, read_records
from .rows import Row, file_rows, to_row

BATCH = 1024  # rows per record batch read from a table or a live dataset
TABLE_SUFFIXES = (".parquet", ".arrow", ".feather", ".ipc")
RECORD_COLUMNS = ("messages", "conversations", "prompt", "completion")
ROW_COLUMNS = ("input_ids", "labels", "attention_mask", "assistant_masks", "completion_mask",
               "position_ids", "seq_lengths")
_GLOB_CHARS = set("*?[")


# --- what DATA is ------------------------------------------------------------------------


def is_glob(data: str | Path) -> bool:
    return bool(_GLOB_CHARS & set(str(data)))


def is_table(data: str | Path | None) -> bool:
    """DATA names parquet or arrow data (a file, a glob, a folder), not JSON Lines."""
    if data is None:
        return False
    if is_glob(data):
        return True
    p = Path(data)
    if p.is_dir():
        return True
    return p.suffix.lower() in TABLE_SUFFIXES


def check_exists(data: str | Path) -> None:
    """Raise `InputError` (exit 2) for DATA that cannot be read at all."""
    if is_table(data):
        if open_source(data).total == 0:
            raise InputError(f"data {data}: holds no rows")
        return
    if not Path(data).is_file():
        raise InputError(f"data {data}: no such file")


def count(data: str | Path) -> int:
    """How many records (or token rows) DATA holds: rows of a table, non-blank lines of JSON
    Lines (each one a record, readable or not), items of a `.json` list."""
    if is_table(data):
        return open_source(data).total
    p = Path(data)
    if p.suffix == ".json":
        try:
            items = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        return len(items) if isinstance(items, list) else 0
    n = 0
    with p.open("rb") as fh:
        for raw in fh:
            n += bool(raw.strip())
    return n


def records(data: str | Path, start: int = 0, stop: int | None = None):
    """The records of DATA whose index lies in [start, stop) (all of them by default)."""
    return _entries(data, start, stop, "records", read_records,
                    lambda n, raw: parse_line(str(data), n, raw))


def rows(data: str | Path, start: int = 0, stop: int | None = None):
    """The token rows of DATA (`--tokenized`) whose index lies in [start, stop)."""
    return _entries(data, start, stop, "rows", file_rows, lambda n, raw: _line_row(data, n, raw))


def _entries(data: str | Path, start: int, stop: int | None, table_reader: str,
             read_file: Callable[[str | Path], Iterator], parse_line_at: Callable) -> Iterator:
    """The entries of DATA with index in [start, stop), read lazily: a table's by its reader
    method `table_reader`, a whole file by `read_file`, a `.json` list's sliced from it, and
    a share of a JSON Lines file line by line (`parse_line_at(line number, raw line)`)."""
    if is_table(data):
        yield from getattr(open_source(data), table_reader)(start, stop)
    elif start == 0 and stop is None:
        yield from read_file(data)
    elif Path(data).suffix == ".json":
        yield from itertools.islice(read_file(data), start, stop)
    else:
        for line_no, raw in _jsonl_lines(Path(data), start, stop):
            yield parse_line_at(line_no, raw)


def _line_row(data: str | Path, n: int, raw: bytes) -> Row:
    """The token row on line `n` of a JSON Lines file (or why it is not one)."""
    where = f"{data}:{n}"
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return Row(n, where, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})")
    except json.JSONDecodeError as exc:
        return Row(n, where, None, f"not valid JSON ({exc.msg}, column {exc.colno})")
    return to_row(obj, n, where)


def _jsonl_lines(p: Path, start: int, stop: int | None) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of the non-blank lines with index in [start, stop); the lines
    before are only scanned for their ends, never decoded."""
    index = 0
    with p.open("rb") as fh:
        for line_no, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            if stop is not None and index >= stop:
                return
            if index >= start:
                yield line_no, raw
            index += 1


# --- shards --------------------------------------------------------------------------------


def parse_shard(text: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """`"2/3"` -> (2, 3): the second of three shards. Shards count from 1."""
    if text is None:
        return None
    if isinstance(text, tuple):
        i, n = text
    else:
        head, sep, tail = str(text).partition("/")
        try:
            i, n = int(head), int(tail)
        except ValueError:
            i = n = None
        if not sep or i is None:
            raise InputError(f"--shard {text}: expected I/N, e.g. 2/8 (the second of 8 shards)")
    if n < 1 or not 1 <= i <= n:
        hint = (f"; shards count from 1, so a 0-based array index is --shard $((I+1))/{n}"
                if i == 0 and n >= 1 else "")
        raise InputError(f"--shard {i}/{n}: I must be between 1 and N{hint}")
    return i, n


def shard_range(total: int, i: int, n: int) -> tuple[int, int]:
    """Record indices [start, stop) of shard i of n (from 1): contiguous, sizes within one."""
    return total * (i - 1) // n, total * i // n


# --- locations ------------------------------------------------------------------------------


def locate(source: str, layout: list, line: int) -> str:
    """`file:row` for row `line` (from 1, across every file of `layout`), else `source:line`.

    `layout` is `[(name, rows), ...]`, one entry per file, for inputs whose locations name the
    file; empty where the whole input is one place (a JSON Lines file, a `save_to_disk` folder).
    """
    if not layout:
        return f"{source}:{line}"
    first = 0
    for name, n in layout:
        if line <= first + n:
            return f"{name}:{line - first}"
        first += n
    return f"{source}:{line}"


# --- tables ---------------------------------------------------------------------------------


def _pyarrow():
    try:
        import pyarrow  # noqa: F401
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise InputError("reading parquet or arrow data needs pyarrow: "
                         "pip install 'loradoctor[data]'") from None
    return pyarrow


@dataclass
class Part:
    """One file of a table: parquet, or arrow (IPC file or stream, as `save_to_disk` writes)."""

    path: Path
    kind: str  # "parquet" | "arrow"
    rows: int = 0
    columns: tuple[str, ...] = ()

    def batches(self, columns: list[str], lo: int, hi: int) -> Iterator[tuple[int, list[dict]]]:
        """(local index of the first row, rows as dicts) for its rows in [lo, hi)."""
        if self.kind == "parquet":
            yield from self._parquet(columns, lo, hi)
            return
        first = 0
        for batch in _arrow_batches(self.path):
            n = batch.num_rows
            if first + n > lo and first < hi:
                a, b = max(lo, first) - first, min(hi, first + n) - first
                yield first + a, batch.select(columns).slice(a, b - a).to_pylist()
            first += n
            if first >= hi:
                return

    def _parquet(self, columns: list[str], lo: int, hi: int):
        pa = _pyarrow()
        pf = pa.parquet.ParquetFile(str(self.path))
        first = 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if first + n > lo and first < hi:
                at = first
                for batch in pf.iter_batches(batch_size=BATCH, row_groups=[g], columns=columns):
                    m = batch.num_rows
                    if at + m > lo and at < hi:
                        a, b = max(lo, at) - at, min(hi, at + m) - at
                        yield at + a, batch.slice(a, b - a).to_pylist()
                    at += m
            first += n
            if first >= hi:
                return


def _arrow_batches(path: Path, mapped: bool = False):
    # The rows are read, not memory-mapped: pages of a mapped file stay in the resident set
    # once touched, so a scan of a 10 GB file would look like 10 GB of memory (reclaimable, but
    # a scheduler's memory limit may count it). Counting rows maps it: only the batches'
    # headers are touched then, never their data.
    pa = _pyarrow()
    with (pa.memory_map(str(path)) if mapped else pa.OSFile(str(path))) as source:
        try:
            reader = pa.ipc.open_file(source)
        except pa.ArrowInvalid:  # `save_to_disk` writes the streaming format
            source.seek(0)
            yield from pa.ipc.open_stream(source)
            return
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)


def _part(path: Path) -> Part:
    pa = _pyarrow()
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            meta = pa.parquet.ParquetFile(str(path))
            return Part(path, "parquet", meta.metadata.num_rows, tuple(meta.schema_arrow.names))
        rows, names = 0, ()
        for batch in _arrow_batches(path, mapped=True):
            rows += batch.num_rows
            names = names or tuple(batch.schema.names)
        return Part(path, "arrow", rows, names)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"data {path}: cannot be read as {suffix.lstrip('.')} "
                         f"({str(exc).splitlines()[0]})") from None


class TableSource:
    """Parquet / arrow files read as one table, in batches; rows numbered from 1 across them."""

    def __init__(self, spec: str, parts: list[Part], per_file: bool):
        self.spec = spec
        self.parts = parts
        self.per_file = per_file
        self.starts = list(itertools.accumulate((p.rows for p in parts), initial=0))
        self.total = self.starts[-1]

    @property
    def layout(self) -> list[tuple[str, int]]:
        """Each file's name and row count, for locations (`locate`); empty for one folder."""
        return [(str(p.path), p.rows) for p in self.parts] if self.per_file else []

    def where(self, index: int) -> str:
        """Where the row with this index (from 0) is: `file:row` or `folder:row`."""
        return locate(self.spec, self.layout, index + 1)

    def _rows(self, wanted: tuple[str, ...], start: int, stop: int | None):
        """(index, raw row dict) for rows in [start, stop), in order."""
        stop = self.total if stop is None else min(stop, self.total)
        if start >= stop:
            return
        k = bisect.bisect_right(self.starts, start) - 1
        for part, first in zip(self.parts[k:], self.starts[k:]):
            if first >= stop:
                return
            columns = [c for c in wanted if c in part.columns] or list(part.columns)
            for local, batch in part.batches(columns, max(0, start - first), stop - first):
                for j, row in enumerate(batch):
                    yield first + local + j, row

    def records(self, start: int = 0, stop: int | None = None):
        for index, row in self._rows(RECORD_COLUMNS, start, stop):
            rec = normalise_record(_without_nulls(row), self.spec, index + 1)
            rec.where = self.where(index) if self.per_file else None
            yield rec

    def rows(self, start: int = 0, stop: int | None = None):
        for index, row in self._rows(ROW_COLUMNS, start, stop):
            yield to_row(_without_nulls(row, turns=False), index + 1, self.where(index))


def _without_nulls(row: dict, turns: bool = True) -> dict:
    """A table has no missing fields, only nulls: a record without `messages` has it null, and
    a turn of a ShareGPT row in a table that also holds role/content turns has role null."""
    out = {k: v for k, v in row.items() if v is not None}
    if turns:
        for key in ("messages", "conversations"):
            value = out.get(key)
            if isinstance(value, list):
                out[key] = [{k: v for k, v in t.items() if v is not None}
                            if isinstance(t, dict) else t for t in value]
    return out


_SOURCES: dict[str, tuple[tuple, TableSource]] = {}


def open_source(data: str | Path) -> TableSource:
    """The table DATA names. Its files' row counts are read once per process, and again when a
    file changed (or a glob matches other files): a long session may rewrite its data."""
    spec = str(data)
    files, per_file = _resolve(spec)
    signature = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    cached = _SOURCES.get(spec)
    if cached is None or cached[0] != signature:
        cached = (signature, TableSource(spec, [_part(f) for f in files], per_file))
        _SOURCES[spec] = cached
    return cached[1]


def _resolve(spec: str) -> tuple[list[Path], bool]:
    """The files DATA names, in order, and whether locations name each file."""
    _pyarrow()
    if is_glob(spec):
        files = sorted(Path(f) for f in glob.glob(spec, recursive=True) if Path(f).is_file())
        if not files:
            raise InputError(f"data {spec}: the pattern matches no file")
        others = [f for f in files if f.suffix.lower() not in TABLE_SUFFIXES]
        if others:
            raise InputError(f"data {spec}: matches {others[0]}, which is not a parquet or "
                             f"arrow file (a pattern must match only those)")
        return files, True
    p = Path(spec)
    if p.is_file():
        return [p], True
    if not p.exists():
        raise InputError(f"data {spec}: no such file or folder")
    folder = _dataset_folder(p)
    if (folder / "state.json").is_file():
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        files = [folder / f["filename"] for f in state.get("_data_files", [])]
        missing = [f for f in files if not f.is_file()]
        if not files or missing:
            what = f"{missing[0].name}, which is missing" if missing else "no file"
            raise InputError(f"data {spec}: a save_to_disk folder whose state.json names {what}")
        return files, False
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in TABLE_SUFFIXES)
    if not files:
        raise InputError(f"data {spec}: a folder, but neither a datasets save_to_disk folder "
                         f"(state.json) nor one holding parquet or arrow files")
    return files, True


def _dataset_folder(p: Path) -> Path:
    """A `DatasetDict` folder's split to read: `train`, or its only split."""
    listing = p / "dataset_dict.json"
    if not listing.is_file():
        return p
    splits = json.loads(listing.read_text(encoding="utf-8")).get("splits", [])
    if "train" in splits:
        return p / "train"
    if len(splits) == 1:
        return p / splits[0]
    raise InputError(f"data {p}: a DatasetDict folder with splits {', '.join(splits)}; pass "
                     f"the split's folder, e.g. {p / splits[0]}")


# --- live datasets objects (the Python API) --------------------------------------------------


def is_live_dataset(obj: Any) -> bool:
    """A Hugging Face `datasets.Dataset` or `IterableDataset` (without importing datasets)."""
    return type(obj).__module__.split(".")[0] == "datasets" and hasattr(obj, "iter")


def live_count(obj: Any) -> int | None:
    """How many items a live object holds, or None when it cannot say (an IterableDataset)."""
    try:
        return len(obj)
    except TypeError:
        return None


def iter_live(obj: Any, start: int = 0, stop: int | None = None) -> Iterator[Any]:
    """Items [start, stop) of a list, an iterable or a `datasets` object (read in batches)."""
    if not is_live_dataset(obj):
        yield from itertools.islice(obj, start, stop)
        return
    if start or stop is not None:
        n = live_count(obj)
        if n is not None and hasattr(obj, "select"):
            obj = obj.select(range(min(start, n), n if stop is None else min(stop, n)))
        else:
            obj = obj.skip(start)
            if stop is not None:
                obj = obj.take(max(0, stop - start))
    for batch in obj.iter(batch_size=BATCH):
        columns = list(batch)
        if not columns:
            continue
        for i in range(len(batch[columns[0]])):
            yield {c: batch[c][i] for c in columns}


def live_rows(obj: Any, name: str, start: int = 0, stop: int | None = None):
    """Token rows of a live object, numbered from 1 (item 0 is row 1, at `name[0]`)."""
    for i, raw in enumerate(iter_live(obj, start, stop), start):
        yield to_row(raw, i + 1, f"{name}[{i}]")


def live_records(obj: Any, start: int = 0, stop: int | None = None):
    """Conversation records of a live list, iterable or `datasets` object, numbered from 1
    (`records:1` is item 0)."""
    live = is_live_dataset(obj)
    for i, raw in enumerate(iter_live(obj, start, stop), start + 1):
        if live and isinstance(raw, dict):
            raw = _without_nulls(raw)
        yield normalise_record(raw, "records", i)
