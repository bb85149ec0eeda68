"""A short real training run: N AdamW steps over the trainable parameters on one batch.

Used by LD406 (`check-model --train-steps N`, on the user's adapted model, restored after)
and by the reference runs (on their own models). The loop is the plain one people write:
forward with labels, `loss.backward()`, `optimizer.step()`, `optimizer.zero_grad()`. The
forward and its loss go through `convention` (transformers' keywords and loss by default, or
what `convention.detect` measured on the user's own model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from . import convention as conv_
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
