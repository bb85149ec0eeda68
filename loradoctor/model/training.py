"""A short real training run: N AdamW steps over the trainable parameters on one batch.

Used by LD406 (`check-model --train-steps N`, on the user's adapted model, restored after:
`short_run`, with what the steps changed) and by the reference runs (on their own models).
The loop is the plain one people write: forward with labels, `loss.backward()`,
`optimizer.step()`, `optimizer.zero_grad()`. The
forward and its loss go through `convention` (transformers' keywords and loss by default, or
what `convention.detect` measured on the user's own model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from . import convention as conv_
from .safety import preserved
from .shared import discovery
from ..text import one_line

TRAIN_LR = 1e-3  # high enough that a few steps on one batch visibly move the loss


@dataclass
class TrainRun:
    losses: list[float] = field(default_factory=list)  # one per step (nan/inf kept)
    error: str | None = None                            # the step that raised, and why

    @property
    def finite(self) -> bool:
        return all(math.isfinite(x) for x in self.losses)


def train(model, batch: dict, steps: int, params=None, lr: float = TRAIN_LR,
          convention: conv_.LossConvention = conv_.HF) -> TrainRun:
    """Run `steps` AdamW steps (params: the trainable parameters unless given). Never raises."""
    run = TrainRun()
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not params:
        run.error = "no trainable parameters"
        return run
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    for step in range(steps):
        try:
            out = conv_.call(model, batch, convention, labels=True)
            loss = conv_.loss(out, batch, convention)
            run.losses.append(float(loss.detach()))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        except Exception as exc:  # noqa: BLE001 - the crash is what the caller reports
            run.error = f"step {step}: {one_line(exc)}"
            break
    opt.zero_grad(set_to_none=True)
    return run


@dataclass
class ShortRun:
    """`train` on the user's adapted model, and what it changed (every value put back after)."""

    run: TrainRun
    final: float | None                                   # the loss after the last step
    changed_a: list = field(default_factory=list)         # adapters whose A moved
    changed_b: list = field(default_factory=list)         # ... whose B moved
    changed: list = field(default_factory=list)           # ... either
    base_changed: list[str] = field(default_factory=list)  # base tensors whose values moved
    trainable: set[str] = field(default_factory=set)      # the trainable parameters' names

    @property
    def curve(self) -> list[float]:
        """The loss at every step, then after the last one."""
        return [*self.run.losses, *([self.final] if self.final is not None else [])]

    @property
    def frozen_changed(self) -> list[str]:
        """Base tensors that moved although they do not train."""
        return [n for n in self.base_changed if n not in self.trainable]


def short_run(ctx, adapters: list, steps: int) -> ShortRun:
    """`steps` AdamW steps of the adapted model on the probe batch, inside `safety.preserved`:
    the loss curve, then which adapters and which base tensors changed."""
    model = ctx.adapted
    adapter_ids = discovery(ctx).adapter_param_ids()
    trainable = [p for p in model.parameters() if p.requires_grad]
    factors = [t for a in adapters for t in a.tensors()]
    before = {id(t): t.detach().clone() for t in factors}
    base = [(n, p) for n, p in model.named_parameters() if id(p) not in adapter_ids]
    fingerprint = {n: _fingerprint(p) for n, p in base}
    with preserved(model, [*trainable, *factors], seed=ctx.seed):
        out = ShortRun(train(model, ctx.probe, steps, convention=ctx.convention), None)
        if out.run.error is None and out.run.losses:
            with torch.no_grad():
                result = conv_.call(model, ctx.probe, ctx.convention, labels=True)
                out.final = float(conv_.loss(result, ctx.probe, ctx.convention).detach())
        out.changed_b = [a for a in adapters if not torch.equal(a.B.detach(), before[id(a.B)])]
        out.changed_a = [a for a in adapters if not torch.equal(a.A.detach(), before[id(a.A)])]
        out.changed = [a for a in adapters if a in out.changed_a or a in out.changed_b]
        out.base_changed = [n for n, p in base if _fingerprint(p) != fingerprint[n]]
    out.trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return out


def _fingerprint(p) -> tuple[float, float]:
    x = p.detach().double()
    return float(x.sum()), float((x * x).sum())
