"""The per-layer probe: every adapted layer called on its own, its output explained.

Every adapted layer is called directly on a small input of its own width, with every
adapter's factors set to distinct random values, and its output matched against `F.linear`
with its own weight and bias plus its own adapter (or, when that fails, against other layers'
weights and adapters). A few tiny matmuls per layer: no model forward per module. Feeds LD201,
LD203, LD204, LD405. On a model without weight values (static mode) the verdicts come from the
code alone (`static.static_probe`). Runs inside `safety.preserved`: the user's model comes
back exactly as it was.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .adapters import Adapter, linear_shape, linear_weight
from .layer_verdict import LayerVerdict, ModuleProbe, read_verdict
from .placement import device_for, weights_of
from .quantized import quant_kind
from .quantized_state import own_output
from .references import owner_index
from .safety import preserved
from .shared import MODULE_RTOL, discovery, model_dtype, tol
from ..text import one_line

PROBE_SHAPE = (2, 4)          # (batch, tokens) of the per-layer probe input


def module_probe(ctx) -> ModuleProbe:
    if getattr(ctx, "static", False):  # no weight values: the verdicts come from the code
        from .static import static_probe
        return ctx.memo("module_probe", lambda: static_probe(ctx))
    return ctx.memo("module_probe", lambda: _module_probe(ctx))


def _module_probe(ctx) -> ModuleProbe:
    disc = discovery(ctx)
    model = ctx.adapted
    adapters = [a for a in disc.adapters if a.layer_type == "linear"]
    dtype = model_dtype(ctx)
    rtol = tol(MODULE_RTOL, dtype)
    owners = owner_index(disc)
    factors = [t for a in adapters for t in (a.A, a.B)]
    verdicts = []
    with preserved(model, factors, seed=ctx.seed), torch.no_grad():
        model.eval()
        gen = torch.Generator().manual_seed(ctx.seed + 1)
        for a in adapters:  # distinct random factors: each layer's output names its adapter
            A = torch.randn(a.rank, a.in_features, generator=gen) / math.sqrt(a.in_features)
            B = torch.randn(a.out_features, a.rank, generator=gen) / math.sqrt(a.rank)
            a.set_factors(A.to(a.A.device, a.A.dtype), B.to(a.B.device, a.B.dtype))
        inputs: dict[int, torch.Tensor] = {}

        def x_for(width: int) -> torch.Tensor:
            if width not in inputs:
                g = torch.Generator().manual_seed(ctx.seed + width)
                inputs[width] = torch.randn(*PROBE_SHAPE, width, generator=g)
            return inputs[width]

        cache: dict[tuple, torch.Tensor] = {}

        def base_out(name: str, layer, width: int) -> torch.Tensor | None:
            key = ("base", name, width)
            if key not in cache:
                if linear_shape(layer) is None or linear_shape(layer)[1] != width:
                    return None
                cache[key] = _base_output(layer, x_for(width))
            return cache[key]

        def low_out(a2: Adapter, width: int) -> torch.Tensor | None:
            key = ("low", a2.name, id(a2), width)
            if key not in cache:
                if a2.in_features != width:
                    return None
                cache[key] = (x_for(width) @ a2.a_matrix().detach().float().cpu().t()) \
                    @ a2.b_matrix().detach().float().cpu().t()
            return cache[key]

        widths = sorted({int(s[1]) for s in (linear_shape(m) for m in disc.linears.values())
                         if s is not None})
        for a in adapters:
            v = read_verdict(a, "ok", disc, owners)
            verdicts.append(v)
            x = _probe_input(x_for(a.in_features), a)
            try:
                y = _call(a.host, x)
            except RecursionError as exc:
                v.status, v.error = "recursion", one_line(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - the user's forward raising is a finding
                v.status, v.error = "crash", one_line(exc)
                hinted = [o.in_features for o in adapters if o.name in v.static_forward_of]
                # Where does it run? The width names whose weights it computes with.
                for w in _ordered(hinted + widths, set(widths)):
                    if w == a.in_features:
                        continue
                    try:
                        y2 = _call(a.host, x_for(w).to(x.device, x.dtype))
                    except Exception:  # noqa: BLE001
                        continue
                    v.ran_at_width = w
                    _explain(v, y2.float().cpu(), w, a, disc, adapters, base_out, low_out, rtol)
                    break
                continue
            _explain(v, y.float().cpu(), a.in_features, a, disc, adapters, base_out, low_out, rtol)
    return ModuleProbe(verdicts, rtol)


def _probe_input(x: torch.Tensor, a: Adapter) -> torch.Tensor:
    """`x` where and in the dtype the adapted layer's weight is (a quantized one's: fp32)."""
    weight = a.base_weight()
    return x.to(device_for(a.base, weight), weight.dtype)


def _base_output(layer, x: torch.Tensor) -> torch.Tensor:
    """`layer`'s own output on `x` (fp32, CPU): `F.linear` with its weight and bias, or a
    quantized layer's own kernel, as the adapter around it calls it."""
    if quant_kind(layer) is not None:
        return own_output(layer, x.to(layer.weight.device)).float().cpu()
    with weights_of(layer):  # an offloaded layer's weights, for this call only
        w, b = linear_weight(layer), getattr(layer, "bias", None)
        return F.linear(x, w.detach().float().cpu(),
                        None if b is None else b.detach().float().cpu())


def _call(module, x):
    y = module(x)
    if isinstance(y, (tuple, list)):
        y = y[0]
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"returned {type(y).__name__}, not a tensor")
    return y


def _fit(y, base, low):
    """(scaling, residual) of y ≈ base + s * low; residual relative to |y|."""
    d = y - base
    ny = max(float(y.norm()), 1e-30)
    if low is None:
        return None, float(d.norm()) / ny
    ll = float((low * low).sum())
    if ll == 0:
        return 0.0, float(d.norm()) / ny
    s = float((d * low).sum()) / ll
    return s, float((d - s * low).norm()) / ny


def _explain(v: LayerVerdict, y, width, a: Adapter, disc, adapters, base_out, low_out, rtol):
    out_f = int(y.shape[-1])
    own_base = base_out(a.name, a.base, width) if width == a.in_features else None
    own_low = low_out(a, width)
    if own_base is not None and own_base.shape[-1] == out_f:
        d_norm = float((y - own_base).norm())
        if d_norm <= rtol * max(float(y.norm()), 1e-30):
            v.status, v.residual = "no-delta", d_norm / max(float(y.norm()), 1e-30)
            return
        s, res = _fit(y, own_base, own_low)
        v.residual = res
        if res <= rtol:
            v.status, v.measured_scaling = "ok", s
            return
    # Not its own layer: which weights and which adapter does it compute with?
    same = [(n, m) for n, m in disc.linears.items()
            if linear_shape(m) == (out_f, width)]
    by_name = {x.name: x for x in adapters}
    js = _ordered([n for n in v.static_forward_of] + [a.name] + [n for n, _ in same],
                  {n for n, _ in same})
    ks = [x for x in adapters if x.in_features == width and x.out_features == out_f]
    static_ks = [by_name[n] for n in v.static_adapter_of if n in by_name]
    best = (math.inf, None, None, None)
    layers = dict(same)
    for j in js:
        bj = base_out(j, layers[j], width)
        if bj is None:
            continue
        tries = [None, *static_ks, a if a in ks else None, by_name.get(j)]
        tries = [t for i, t in enumerate(tries) if t is None or (t in ks and t not in tries[:i])]
        for k in tries:
            s, res = _fit(y, bj, None if k is None else low_out(k, width))
            if res < best[0]:
                best = (res, j, k, s)
            if res <= rtol:
                break
        if best[0] <= rtol:
            break
    if best[0] > rtol:  # own weight with another adapter
        for k in ks:
            ob = base_out(a.name, a.base, width)
            if ob is None or ob.shape[-1] != out_f:
                break
            s, res = _fit(y, ob, low_out(k, width))
            if res < best[0]:
                best = (res, a.name, k, s)
            if res <= rtol:
                break
    res, j, k, s = best
    if res <= rtol and (j != a.name or k is not a):
        v.status = "aliased"
        v.forward_of = j if j != a.name else None
        v.adapter_of = "" if k is None else (k.name if k is not a else None)
        v.measured_scaling, v.residual = s, res
        if v.forward_of is None and v.adapter_of == "":
            v.status = "no-delta"
        return
    if v.status != "crash":
        v.status = "unexplained"
    v.residual = res if v.residual is None else v.residual


def _ordered(names, allowed):
    seen, out = set(), []
    for n in names:
        if n in allowed and n not in seen:
            seen.add(n)
            out.append(n)
    return out
