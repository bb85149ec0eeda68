"""Gradient flow: one real backward of the adapted model on the probe batch (LD404).

In training mode, as people train (gradient checkpointing as configured), with the dropout
modules off so the measurement does not depend on a random mask; a quantized base's layers run
as training runs them (`quantized_state.training_path`, installed for the run). Every `.grad`
the user had is put back afterwards, unregistered adapter factors' included.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from . import convention as conv_
from .memory import releasing
from .safety import preserved
from .shared import discovery
from ..text import one_line

DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
           nn.FeatureAlphaDropout)


@dataclass
class GradResult:
    error: str | None = None
    loss: float | None = None
    grad_max: dict[int, float | None] = field(default_factory=dict)  # id(tensor) -> max |grad|
    trainable: int = 0
    base_with_grad: list[tuple[str, float]] = field(default_factory=list)


def gradients(ctx) -> GradResult:
    return ctx.memo("gradients", lambda: _gradients(ctx))


@releasing
def _gradients(ctx) -> GradResult:
    model = ctx.adapted
    disc = discovery(ctx)
    adapter_ids = disc.adapter_param_ids()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    seen = {id(p) for _, p in named}
    for a in disc.adapters:  # unregistered factors are not in model.parameters()
        for t, label in ((a.A, f"{a.name}.A"), (a.B, f"{a.name}.B")):
            if t.requires_grad and id(t) not in seen and t.is_leaf:
                named.append((label, t))
                seen.add(id(t))
    res = GradResult(trainable=len(named))
    probe = ctx.probe
    tensors = [p for _, p in named]
    saved_grads = [(t, t.grad) for t in tensors]  # unregistered factors too: not model params
    with preserved(model, seed=ctx.seed):
        model.train()  # the mode people train in: gradient checkpointing as configured
        for m in model.modules():  # dropout off: no random mask decides what gets a gradient
            if isinstance(m, DROPOUT):
                m.eval()
        try:
            for t in tensors:
                t.grad = None
            out = conv_.call(model, probe, ctx.convention, labels=True)
            loss = conv_.loss(out, probe, ctx.convention)
            res.loss = float(loss.detach())
            if not named or not loss.requires_grad:
                res.grad_max = {id(p): None for _, p in named}
                return res
            # A real backward (not autograd.grad): reentrant gradient checkpointing only
            # delivers gradients through .backward(), exactly as in the user's training loop.
            loss.backward()
            del loss, out
            for n, p in named:
                m = None if p.grad is None else float(p.grad.detach().abs().max())
                res.grad_max[id(p)] = m
                if id(p) not in adapter_ids and m:
                    res.base_with_grad.append((n, m))
        except Exception as exc:  # noqa: BLE001 - explained by LD201/LD401
            res.error = one_line(exc)
            return res
        finally:
            for t, g in saved_grads:
                t.grad = g
    return res
