"""What the per-layer probe says of each adapted layer: whose weight and whose adapter it
computes with, from its output (`layer_probe.py`) or, without weight values, from its code
alone (`static.py`). LD201, LD203, LD204 and LD405 read these verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .adapters import Adapter
from .references import other_layers_held


@dataclass
class LayerVerdict:
    """What one adapted layer computes when called on its own (factors perturbed)."""

    adapter: Adapter
    status: str                      # ok | no-delta | aliased | crash | recursion | unexplained
    width: int                       # the input width it was called with
    error: str | None = None
    measured_scaling: float | None = None
    residual: float | None = None
    forward_of: str | None = None    # whose weight it computes with, when not its own
    adapter_of: str | None = None    # whose adapter it adds, when not its own ("" = none)
    ran_at_width: int | None = None  # for a crash: the width at which it does run
    static_refs: list[tuple[str, str, str]] = field(default_factory=list)  # (via, kind, name)
    levels: int = 0                  # nested patched functions in its forward
    names_forward: bool = False
    holds_self: bool = False
    patched: bool = False

    @property
    def static_forward_of(self) -> list[str]:
        return [n for _, k, n in self.static_refs if k == "forward"]

    @property
    def static_adapter_of(self) -> list[str]:
        return [n for _, k, n in self.static_refs if k == "adapter"]

    @property
    def aliased(self) -> bool:
        return self.status == "aliased" or bool(self.static_refs)


@dataclass
class ModuleProbe:
    verdicts: list[LayerVerdict]
    rtol: float


def read_verdict(a: Adapter, status: str, disc, owners: dict) -> LayerVerdict:
    """`a`'s verdict, starting at `status`, with what its patched forward holds: the other
    layers it references, nested patches, a `.forward` looked up at call time. `owners` is
    `references.owner_index(disc)`."""
    v = LayerVerdict(a, status, a.in_features, patched="forward" in a.host.__dict__)
    refs, held = other_layers_held(a, disc, owners)
    if refs is not None:
        v.levels, v.names_forward, v.holds_self = refs.levels, refs.names_forward, refs.holds_self
        v.static_refs = held
    return v
