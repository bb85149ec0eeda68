"""The norms of the adapters' B factors while training runs: how far the adapters have moved.

A standard LoRA starts with B = 0 (an identity start) and B grows as the adapters learn; B
norms that stay at zero, or stop growing while the loss still falls, say the adapters are not
what trains. `b_norms` reads every adapter's B in one fused norm and one transfer. A factor
sharded by FSDP2 (a DTensor) is gathered first, so every rank must call it; a factor DeepSpeed
ZeRO-3 partitioned away is not read (None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class FactorNorms:
    """The B factors now: their joint (Frobenius) norm and how many are still all zero."""

    joint: float
    zero: int
    adapters: int


def b_norms(adapters: list) -> FactorNorms | None:
    """The B factors' norms (None without adapters, or with partitioned ZeRO-3 factors)."""
    import torch

    factors = [a.B for a in adapters if getattr(a, "B", None) is not None]
    if not factors or any(hasattr(b, "ds_id") for b in factors):
        return None
    with torch.no_grad():
        full = [(b.full_tensor() if hasattr(b, "full_tensor") else b).detach().float()
                for b in factors]
        device = full[0].device
        norms = torch.stack([n.to(device) for n in torch._foreach_norm(full)]).tolist()
    return FactorNorms(math.sqrt(sum(n * n for n in norms)), sum(1 for n in norms if n == 0),
                       len(norms))
