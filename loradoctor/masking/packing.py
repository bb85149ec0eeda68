"""Packed batches: where their samples are, and which labels are scored across a boundary.

TRL's `packing=True` and transformers' `DataCollatorWithFlattening` put several samples in one
batch row, the position ids restarting at each (`inputs.rows.sample_bounds`). The masking pass
judges each sample as a row of its own; this measures what only the packed row shows. For a
model that shifts labels, the label at a sample's first position is scored from the logits of
the previous sample's last token: unless it is masked (both collators mask it), the model is
trained to predict one sample's start from another's end. For a model that does not shift, the
same holds for the label at a sample's last position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..inputs.rows import CU_SEQ_LENS, batch_rows, sample_bounds
from ..inputs.user_dataset import IGNORE_INDEX
from .scan import Lines


@dataclass
class PackedRow:
    """One batch row holding several samples, [start, end) each."""

    batch: int
    row: int
    bounds: list[tuple[int, int]]

    @property
    def location(self) -> str:
        return f"batch {self.batch} row {self.row}"


@dataclass
class Packing:
    """The packed rows of a run's batches and their boundary labels."""

    rows: list[PackedRow] = field(default_factory=list)
    samples: int = 0  # samples in packed rows
    crossing: Lines = field(default_factory=Lines)  # boundary label supervised
    crossing_at: list[str] = field(default_factory=list)  # their locations, the first few
    scored_at: str = "first"  # which label of a sample is scored from its neighbour


def packed_rows(batches: list[Any]) -> list[PackedRow]:
    """The rows of `batches` that hold more than one sample."""
    out = []
    for b, batch in enumerate(batches):
        if not hasattr(batch, "get") or batch.get("input_ids") is None:
            continue
        ids = batch["input_ids"]
        width = ids.shape[-1] if hasattr(ids, "shape") else len(ids[0])
        positions = _rows_of(batch.get("position_ids"))
        cu = batch.get(CU_SEQ_LENS)
        cu = _flat(cu) if cu is not None and len(ids) == 1 else None
        for r in range(len(ids)):
            bounds = sample_bounds(positions[r] if positions else None, width, cu)
            if len(bounds) > 1:
                out.append(PackedRow(b, r, bounds))
    return out


def measure(batches: list[Any], shifts: bool, keep: int = 6) -> Packing:
    """Packed rows, and the samples whose boundary label is supervised: the first label of
    every sample after the first (a model that shifts), else the last label of every sample
    before the last."""
    out = Packing(packed_rows(batches), scored_at="first" if shifts else "last")
    for row in batch_rows(batches):
        if row.sample is None or row.item is None or not row.item.labels:
            continue
        out.samples += 1
        number, count = row.sample
        label = row.item.labels[0] if shifts else row.item.labels[-1]
        boundary = number > 0 if shifts else number < count - 1
        if boundary and label != IGNORE_INDEX:
            out.crossing.add(row.line)
            if len(out.crossing_at) < keep:
                out.crossing_at.append(row.location)
    return out


def packing(ctx) -> Packing:
    """The run's batches' packing (once per run); empty without batches."""
    def compute() -> Packing:
        batches = getattr(ctx, "batches_given", None) or []
        conv = getattr(ctx, "convention", None)
        return measure(batches, shifts=conv is None or not conv.has_loss or conv.shifts)
    return ctx.memo("masking.packing", compute)


def _rows_of(value: Any) -> list[list[int]] | None:
    if value is None:
        return None
    rows = value.tolist() if hasattr(value, "tolist") else list(value)
    return rows if rows and isinstance(rows[0], list) else [rows]


def _flat(value: Any) -> list[int]:
    return value.tolist() if hasattr(value, "tolist") else list(value)
