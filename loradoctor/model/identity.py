"""Identity start: one forward of the adapted model on the probe batch against the base logits.

When the run measures the numerics anyway and the model is all fp32, that forward is the
numerics' fp32 pass (`numerics.figures.shared_fp32_logits`): the same eval-mode computation.

LD401 reads it (and LD403, LD201 for the forward's error). Only when the start is not an
identity, a second forward with hooks on every adapted layer says which layers already add
something. Runs inside `safety.preserved`: the user's model comes back exactly as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .memory import releasing
from .numerics.figures import shared_fp32_logits
from .quantized import quant_kind
from .quantized_state import own_output
from .safety import preserved
from .shared import IDENTITY_RTOL, discovery, logits, max_abs_diff, model_dtype, tol
from ..text import one_line


@dataclass
class ForwardResult:
    error: str | None = None
    max_abs_diff: float | None = None
    base_max_abs: float = 0.0
    rtol: float = 0.0
    finite: bool = True
    layer_deltas: list[tuple[str, float]] = field(default_factory=list)  # at init, largest first

    @property
    def identity(self) -> bool:
        return self.error is None and self.max_abs_diff is not None and \
            self.max_abs_diff <= self.rtol * max(1.0, self.base_max_abs)


def adapted_forward(ctx) -> ForwardResult:
    res = ctx.memo("adapted_forward", lambda: _adapted_forward(ctx))
    drop = getattr(ctx, "release_base_logits", None)
    if callable(drop):
        drop()  # this comparison was their only reader: (B, T, V) fp32 need not stay
    return res


@releasing
def _adapted_forward(ctx) -> ForwardResult:
    base = ctx.base_logits
    model = ctx.adapted
    res = ForwardResult(base_max_abs=float(base.abs().max()),
                        rtol=tol(IDENTITY_RTOL, model_dtype(ctx)))
    shared = shared_fp32_logits(ctx)  # the numerics' fp32 pass, when it is this very forward
    with preserved(model, seed=ctx.seed), torch.no_grad():
        model.eval()
        try:
            adapted = shared if shared is not None else logits(model, ctx.probe, ctx.convention)
        except Exception as exc:  # noqa: BLE001 - explained by LD201/LD401
            res.error = one_line(exc)
            return res
        res.finite = bool(torch.isfinite(adapted).all())
        res.max_abs_diff = max_abs_diff(adapted, base)
        del adapted
        if not res.identity:
            res.layer_deltas = _layer_deltas(ctx, model)
    return res


def _layer_deltas(ctx, model) -> list[tuple[str, float]]:
    """Max |layer output - F.linear(its input, own weight, own bias)| per adapted layer."""
    deltas: dict[str, float] = {}
    handles = []
    for a in discovery(ctx).adapters:
        if a.layer_type != "linear":
            continue

        def hook(mod, args, out, a=a):
            if not args or not isinstance(out, torch.Tensor):
                return
            x = args[0]
            if x.shape[-1] != a.in_features or out.shape[-1] != a.out_features:
                deltas[a.name] = math.inf
                return
            ref = own_output(a.base, x) if quant_kind(a.base) is not None else \
                F.linear(x, a.base_weight(), a.base_bias())
            deltas[a.name] = max(deltas.get(a.name, 0.0), float((out - ref).abs().max()))
        handles.append(a.host.register_forward_hook(hook))
    try:
        logits(model, ctx.probe, ctx.convention)
    except Exception:  # noqa: BLE001 - the first forward ran; this one is only for locating
        pass
    finally:
        for h in handles:
            h.remove()
    return sorted(deltas.items(), key=lambda kv: -kv[1])
