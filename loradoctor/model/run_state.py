"""What the run-time rules read while training runs: a few numbers per step, and the history.

`WatchState` is the context the LD42x rules (`checks/training_run.py`) are run on: the loss and
the trainable gradients' norm of the current step, a short loss history, the vocabulary size,
and the adapters whose B factor is still all zero. The measurements here are cheap by design:
one `float(loss)`, one fused norm over the trainable gradients, B factors read once.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class WatchOptions:
    """Thresholds of the run-time rules (named, with defaults; see each rule's docstring)."""

    zero_b_after: int = 5  # LD424: B still all zero after this many steps
    frozen_steps: int = 5  # LD423: this many consecutive steps with the same loss
    frozen_rtol: float = 1e-7
    uniform_steps: int = 3  # LD425: this many consecutive steps at log(V)
    uniform_rtol: float = 0.02  # within 2% of log(V)
    learned_below: float = 0.9  # ... after the loss was once below 90% of log(V)


@dataclass
class WatchState:
    """What the run-time rules read: the current step and a short history."""

    options: WatchOptions = field(default_factory=WatchOptions)
    step: int = 0
    loss: float | None = None
    grad_norm: float | None = None
    losses: deque = field(default_factory=lambda: deque(maxlen=64))
    best_loss: float = math.inf
    vocab_size: int | None = None
    zero_b: list[str] | None = None  # adapters with B all zero, read at step zero_b_after
    n_adapters: int = 0
    fired: set = field(default_factory=set)  # rule codes already reported in this run
    summary: dict[str, Any] = field(default_factory=dict)

    def memo(self, key, compute):  # the engine's context protocol (nothing to share here)
        return compute()


def trainable_grad_norm(trainable: list) -> float | None:
    """The norm of the trainable parameters' gradients (None when none has one yet).

    Under FSDP2 (`fully_shard`) a gradient is a DTensor holding this rank's shard: the norms
    of the shards are joined into the full norm (one collective), so every rank reads the
    norm of the whole gradient, as a training loop's clipping does. Under DeepSpeed ZeRO-3
    the gradients are read through DeepSpeed's accessor (`gradient_of`)."""
    import torch

    grads = [g for g in map(gradient_of, trainable) if g is not None]
    if not grads:
        return None
    sharded = [g for g in grads if hasattr(g, "full_tensor")]
    plain = [g for g in grads if not hasattr(g, "full_tensor")]
    totals = []
    for group in (sharded, plain):
        if not group:
            continue
        norms = torch._foreach_norm(group)
        total = torch.linalg.vector_norm(torch.stack([n.float().to(norms[0].device)
                                                      for n in norms]))
        totals.append(float(total.full_tensor() if hasattr(total, "full_tensor") else total))
    return totals[0] if len(totals) == 1 else math.sqrt(sum(t * t for t in totals))


def gradient_of(param):
    """A parameter's gradient: `.grad`, or under DeepSpeed ZeRO-3 (where `.grad` is None and
    the gradient lives partitioned in the engine) the full gradient DeepSpeed gathers."""
    if param.grad is not None or not hasattr(param, "ds_id"):
        return param.grad
    from deepspeed.utils import safe_get_full_grad
    return safe_get_full_grad(param)


def zero_b_adapters(adapters: list) -> list[str]:
    """The adapters whose B factor is still all zero."""
    return [a.name for a in adapters if not bool(a.B.detach().abs().max() > 0)]


def number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value.detach().float().mean()) if hasattr(value, "detach") else float(value)
    except (TypeError, ValueError):
        return None


def vocab_size(model: Any) -> int | None:
    if model is None:
        return None
    config = getattr(model, "config", None)
    n = getattr(config, "vocab_size", None)
    if isinstance(n, int):
        return n
    get = getattr(model, "get_output_embeddings", None)
    emb = get() if callable(get) else None
    weight = getattr(emb, "weight", None)
    return int(weight.shape[0]) if weight is not None else None
