"""Which linear layers carry an adapter, by kind (q/k/v/o, gate/up/down, ...) and by layer, and
which parameters train outside the adapters (LD210).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .layer_names import KIND_ORDER, kind_of, layer_of
from .quantized import values_in


@dataclass
class Coverage:
    """Layer index (None: outside the numbered layers) -> kind -> adapted; kinds and layers in
    table order."""

    cells: dict[int | None, dict[str, bool]]
    kinds: list[str]
    layers: list[int]

    def gaps(self) -> dict[tuple[int, tuple[int, ...], tuple[int, ...]], list[str]]:
        """Kinds adapted in some layers but not in others, grouped by the same gaps:
        (layers that have the kind, adapted ones, missing ones) -> kinds."""
        groups: dict[tuple, list[str]] = {}
        for kind in self.kinds:
            present = [layer for layer in self.layers if kind in self.cells[layer]]
            have = [layer for layer in present if self.cells[layer][kind]]
            if have and len(have) < len(present):
                missing = [layer for layer in present if not self.cells[layer][kind]]
                groups.setdefault((len(present), tuple(have), tuple(missing)), []).append(kind)
        return groups


def coverage(disc) -> Coverage:
    """The coverage of the linear layers `disc` found (adapters on embeddings as their kind)."""
    adapted = {a.name for a in disc.adapters}
    cells: dict[int | None, dict[str, bool]] = {}
    for name in disc.linears:
        layer, kind = layer_of(name), kind_of(name)
        row = cells.setdefault(layer, {})
        row[kind] = row.get(kind, False) or name in adapted
    for a in disc.adapters:  # adapters on layers that are not linear (embeddings)
        if a.layer_type != "linear":
            cells.setdefault(layer_of(a.name), {})["embedding"] = True
    kinds = [k for k in [*KIND_ORDER, "embedding"] if any(k in r for r in cells.values())]
    layers = sorted((k for k in cells if k is not None))
    return Coverage(cells, kinds, layers)


@dataclass
class TrainableCount:
    """Parameters (values) of a model: in all, trainable, and trainable outside the adapters."""

    total: int = 0
    trainable: int = 0
    outside: int = 0
    outside_names: list[str] = field(default_factory=list)  # tensors, in model order

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0


def trainable_count(model, adapter_ids: set[int]) -> TrainableCount:
    count = TrainableCount()
    for n, p in model.named_parameters():
        count.total += values_in(p)  # a 4-bit weight: its values, not its packed bytes
        if p.requires_grad:
            count.trainable += p.numel()
            if id(p) not in adapter_ids:
                count.outside += p.numel()
                count.outside_names.append(n)
    return count
