"""Token rows: samples that hold `input_ids` and `labels` but no conversation.

They come from a pre-tokenized file (`check-dataset DATA --tokenized`: JSON Lines or a `.json`
list of `{"input_ids", "labels", ["attention_mask"]}`), from a dataset instance whose items are
such rows (a torch `Dataset`, a Hugging Face `datasets.Dataset`), or from collated batches
(`{"input_ids": (B, T), "labels": (B, T), "attention_mask": (B, T)}`, as a trainer's
dataloader yields them). Each row is numbered from 1 in the order it comes; a row that cannot
be read is kept with the reason, for LD100.

TRL's processed datasets hold a mask instead of labels (`assistant_masks`, `completion_mask`):
the labels are what its collator would make of it (the ids where the mask is 1, else -100).

A packed batch row (TRL's `packing=True`, transformers' `DataCollatorWithFlattening`) holds
several samples, its `position_ids` restarting at each (or its `cu_seq_lens_q` saying where):
it is split there and each sample is a row of its own (`batch 0 row 0 sample 2`), its
position ids kept on the row. A packed row of a dataset (TRL's packed datasets carry
`seq_lengths`, other packers `position_ids`) is split the same way by `unpacked`, each sample
keeping its row's line (`data.jsonl:4 sample 2`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import InputError
from .user_dataset import IGNORE_INDEX, Item, to_item

MASK_KEYS = ("assistant_masks", "completion_mask")
# Where a flattened batch says its samples start (transformers' and TRL's flash-attention kwargs).
CU_SEQ_LENS = "cu_seq_lens_q"
# The length of each sample in a row of TRL's packed datasets (`pack_dataset`, `packing=True`).
SEQ_LENGTHS = "seq_lengths"


@dataclass
class Row:
    line: int
    location: str
    item: Item | None
    problem: str | None = None
    positions: list[int] | None = None  # the row's (or packed sample's) position_ids
    sample: tuple[int, int] | None = None  # a packed row's sample: (its index, how many)
    packed: list[tuple[int, int]] | None = None  # a packed dataset row's samples, not split yet
    # A sample of a packed dataset row: the row's own location, which its line stands for (the
    # row's samples share that line).
    row_location: str | None = None


def to_row(raw: Any, line: int, location: str) -> Row:
    """One raw row (a dict, a tuple, tensors) as a `Row`; what cannot be read is its `problem`."""
    made = None  # the mask the labels were made from here
    if isinstance(raw, Mapping) and "labels" not in raw and "input_ids" in raw:
        made = next((k for k in MASK_KEYS if k in raw), None)
        if made is not None:
            ids, mask = _list(raw["input_ids"]), _list(raw[made])
            raw = {**raw, "labels": [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]}
    if isinstance(raw, Mapping) and ("input_ids" not in raw or "labels" not in raw):
        keys = ", ".join(map(str, list(raw)[:6])) or "none"
        return Row(line, location, None, f"the row has no input_ids and labels (keys: {keys})")
    try:
        item = to_item(raw, location)
    except InputError as exc:
        return Row(line, location, None, str(exc).removeprefix(f"{location} "))
    if made is not None:
        item.mask_from = made
    row = Row(line, location, item)
    if isinstance(raw, Mapping):
        row.positions = _list(raw["position_ids"]) if "position_ids" in raw else None
        bounds = _packed_bounds(raw.get(SEQ_LENGTHS), row.positions, len(item.ids))
        row.packed = bounds if len(bounds) > 1 else None
    return row


def _packed_bounds(seq_lengths: Any, positions: list[int] | None,
                   length: int) -> list[tuple[int, int]]:
    """A dataset row's samples: from TRL's `seq_lengths` where they add up to the row, else
    where its position ids restart at 0, else the whole row (position ids of a left-padded row,
    1 1 1 0 1 2 ..., do not make its padding samples)."""
    if seq_lengths is not None:
        lengths = _list(seq_lengths)
        if len(lengths) > 1 and sum(lengths) == length and min(lengths) > 0:
            return sample_bounds(None, length, list(itertools.accumulate(lengths, initial=0)))
    bounds = sample_bounds(positions, length)
    if positions is None or any(positions[start] != 0 for start, _ in bounds):
        return [(0, length)]
    return bounds


def unpacked(rows: Iterable[Row]) -> Iterator[Row]:
    """The rows, a packed one (`Row.packed`) given as one row per sample: its slice of the
    ids, labels and mask, at the row's line, located `... sample s`."""
    for row in rows:
        if not row.packed or row.item is None:
            yield row
            continue
        item = row.item
        for s, (start, end) in enumerate(row.packed):
            attention = item.attention[start:end] if item.attention is not None else None
            part = Item(item.ids[start:end], item.labels[start:end], attention, item.mask_from)
            yield Row(row.line, f"{row.location} sample {s}", part,
                      positions=row.positions[start:end] if row.positions else None,
                      sample=(s, len(row.packed)), row_location=row.location)


def _list(value: Any) -> list:
    return value.tolist() if hasattr(value, "tolist") else list(value)


def file_rows(path: str | Path) -> Iterator[Row]:
    """The rows of a JSON Lines file (or a `.json` list); a line that is not JSON is a problem."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"data {path}: no such file")
    if p.suffix == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, list) or not data:
            raise InputError(f"data {p}: a .json data file must hold a non-empty list of rows")
        for i, obj in enumerate(data, 1):
            yield to_row(obj, i, f"{p}:{i}")
        return
    seen = 0
    with p.open("r", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            seen += 1
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Row(n, f"{p}:{n}", None, f"not valid JSON ({exc.msg}, column {exc.colno})")
                continue
            yield to_row(obj, n, f"{p}:{n}")
    if not seen:
        raise InputError(f"data {p}: the file holds no rows")


def instance_rows(dataset: Any, name: str = "dataset", start: int = 0,
                  stop: int | None = None) -> Iterator[Row]:
    """`dataset[i]` for every index in [start, stop) (all of them by default), numbered from 1
    (`dataset[0]` is row 1)."""
    try:
        n = len(dataset)
    except Exception as exc:  # noqa: BLE001 - the user's __len__ raised
        raise InputError(f"{name}: len() raised {type(exc).__name__}: {exc}") from exc
    for i in range(start, n if stop is None else min(stop, n)):
        try:
            raw = dataset[i]
        except Exception as exc:  # noqa: BLE001 - the user's __getitem__ raised
            raise InputError(f"{name}[{i}] raised {type(exc).__name__}: {exc}") from exc
        yield to_row(raw, i + 1, f"{name}[{i}]")


def sample_bounds(positions: list[int] | None, length: int,
                  cu_seq_lens: list[int] | None = None) -> list[tuple[int, int]]:
    """[start, end) of each sample in a row of `length` tokens: a new sample wherever the
    position ids restart (do not go on by one), else at the `cu_seq_lens` offsets (a row of
    a flattened batch), else the whole row. Trailing one-token samples at position 0 are a
    packed row's padding (`pad_to_multiple_of`) and are left out."""
    if positions is not None and len(positions) == length:
        starts = [0] + [t for t in range(1, length) if positions[t] != positions[t - 1] + 1]
    elif cu_seq_lens is not None and len(cu_seq_lens) > 2 and cu_seq_lens[-1] == length:
        starts = [s for s in cu_seq_lens[:-1] if 0 <= s < length]
    else:
        return [(0, length)]
    bounds = list(zip(starts, [*starts[1:], length]))
    while len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1 and positions is not None \
            and positions[bounds[-1][0]] == 0:
        bounds.pop()
    return bounds


def batch_rows(batches: Iterable[Any]) -> Iterator[Row]:
    """Every row of every collated batch, numbered from 1 across batches; a packed row gives
    one row per sample (`sample_bounds`)."""
    line = 0
    for b, batch in enumerate(batches):
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            line += 1
            kind = type(batch).__name__
            yield Row(line, f"batch {b}", None, f"a batch must be a dict with input_ids and "
                                                f"labels, got {kind}")
            continue
        ids = _list(batch["input_ids"])
        if ids and not isinstance(ids[0], (list, tuple)):
            ids = [ids]  # one unbatched row
            batch = {k: [_list(v)] for k, v in batch.items()}
        cu_seq_lens = _list(batch[CU_SEQ_LENS]) if CU_SEQ_LENS in batch and len(ids) == 1 \
            else None
        for r in range(len(ids)):
            row = {k: _list(v)[r] for k, v in batch.items()
                   if k in ("input_ids", "labels", "attention_mask", "position_ids", *MASK_KEYS)}
            positions = row.pop("position_ids", None)
            bounds = sample_bounds(positions, len(ids[r]), cu_seq_lens)
            for s, (start, end) in enumerate(bounds):
                line += 1
                where = f"batch {b} row {r}" + (f" sample {s}" if len(bounds) > 1 else "")
                part = {k: v[start:end] if isinstance(v, list) and len(v) == len(ids[r]) else v
                        for k, v in row.items()}
                made = to_row(part, line, where)
                made.positions = positions[start:end] if positions is not None else None
                made.sample = (s, len(bounds)) if len(bounds) > 1 else None
                yield made
