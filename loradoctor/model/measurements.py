"""The shared measurements of check-model, each computed once per run through `ctx.memo`.

- `discovery(ctx)`: the adapters in the adapted model (`adapters.discover`).
- `module_probe(ctx)`: every adapted layer called directly on a small input of its own
  width, with every adapter's factors set to distinct random values, and its output matched
  against `F.linear` with its own weight and bias plus its own adapter (or, when that fails,
  against other layers' weights and adapters). A few tiny matmuls per layer: no model
  forward per module. Feeds LD201, LD203, LD204, LD405.
- `adapted_forward(ctx)`: one forward of the adapted model on the probe batch, compared
  with the base logits (LD401); only when the start is not an identity, a second forward
  with hooks on every adapted layer says which layers add something at init.
- `gradients(ctx)`: one real backward on the probe batch, every `.grad` put back after
  (LD404).
- `persistence(ctx)`: factors perturbed, logits taken and the adapter state saved; a fresh
  copy rebuilt from disk with the user's own code, the state loaded into it (LD501), then
  `W + scaling * B @ A` merged into its base weights (LD502).

Everything that perturbs runs inside `safety.preserved`, so the user's model comes back
exactly as it was: values, grads, requires_grad flags, modes and RNG states. Every forward
goes through `convention` (`ctx.convention`): how this model is called, where its logits
are, and how its loss reads the probe's labels.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from . import convention as conv_
from .adapters import Adapter, Discovery, canonical, discover, forward_refs
from ..rules import SkipCheck
from .memory import releasing
from .safety import preserved, rng_preserved
from ..text import one_line

# Relative tolerances by the dtype the adapted layers compute in (named, not buried).
MODULE_RTOL = {torch.float32: 1e-4, torch.float64: 1e-8, torch.float16: 2e-2,
               torch.bfloat16: 5e-2}
# Identity start: max |adapted - base| logits, relative to max(1, max |base logits|).
IDENTITY_RTOL = {torch.float32: 1e-4, torch.float64: 1e-8, torch.float16: 1e-2,
                 torch.bfloat16: 5e-2}
# Round trip and merge: same scale; merging reorders float math, so it gets more room.
ROUNDTRIP_RTOL = {torch.float32: 1e-4, torch.float64: 1e-8, torch.float16: 1e-2,
                  torch.bfloat16: 5e-2}
MERGE_RTOL = {torch.float32: 1e-3, torch.float64: 1e-6, torch.float16: 3e-2,
              torch.bfloat16: 1e-1}
PROBE_SHAPE = (2, 4)          # (batch, tokens) of the per-layer probe input
PERTURB_RELATIVE = 0.05       # ||scaling * B @ A|| / ||W|| after the persistence perturbation
# Round trip: a factor counts as restored when its loaded value lies within this share of the
# saved value's distance from the fresh copy's own start (or of the saved value's size, when
# larger). Rounding to fp16 (2^-11) or bf16 (2^-8) stays far inside it; a factor left at its
# fresh initialisation is a whole perturbation away.
RESTORED_WITHIN = 0.01
SAVE_LOAD_NAMES = [("save_lora", "load_lora"), ("save_adapter", "load_adapter"),
                   ("save_adapters", "load_adapters"), ("save_lora_weights", "load_lora_weights")]


@contextmanager
def user_code() -> Iterator[None]:
    """Around the user's own code: whatever it prints goes to stderr, never into --json stdout."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def tol(table: dict, dtype: torch.dtype) -> float:
    return table.get(dtype, table[torch.float32])


# --- discovery ---------------------------------------------------------------------------


def discovery(ctx) -> Discovery:
    return ctx.memo("adapters", lambda: discover(ctx.adapted))


def adapters_or_skip(ctx, linear_only: bool = False) -> list[Adapter]:
    """The adapters to check; SkipCheck when there is no adapter code and none in the model."""
    disc = discovery(ctx)
    found = [a for a in disc.adapters if a.layer_type == "linear" or not linear_only]
    if not disc.adapters:
        if ctx.apply_spec is None and ctx.peft_kwargs is None:
            raise SkipCheck("no adapter code given (--apply SPEC or --peft ...)")
        raise SkipCheck("no adapter found in the adapted model (see LD210)")
    if not found:
        raise SkipCheck("no adapter on a linear layer")
    return found


def model_dtype(ctx) -> torch.dtype:
    """The dtype the adapted layers compute in (tolerances depend on it)."""
    for a in discovery(ctx).adapters:
        if a.layer_type == "linear":
            return a.base_weight().dtype
    return next(ctx.adapted.parameters()).dtype


# --- per-layer probe ---------------------------------------------------------------------


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
    owners = _owner_index(disc)
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
                from .adapters import linear_weight
                from .offload import weights_of
                with weights_of(layer):  # an offloaded layer's weights, for this call only
                    w = linear_weight(layer)
                    if w is None or w.shape[1] != width:
                        return None
                    b = getattr(layer, "bias", None)
                    cache[key] = F.linear(x_for(width), w.detach().float().cpu(),
                                          None if b is None else b.detach().float().cpu())
            return cache[key]

        def low_out(a2: Adapter, width: int) -> torch.Tensor | None:
            key = ("low", a2.name, id(a2), width)
            if key not in cache:
                if a2.in_features != width:
                    return None
                cache[key] = (x_for(width) @ a2.a_matrix().detach().float().cpu().t()) \
                    @ a2.b_matrix().detach().float().cpu().t()
            return cache[key]

        widths = sorted({int(w.shape[1]) for w in (_lw(m) for m in disc.linears.values())
                         if w is not None})
        for a in adapters:
            v = LayerVerdict(a, "ok", a.in_features, patched="forward" in a.host.__dict__)
            _static(v, a, disc, owners)
            verdicts.append(v)
            from .offload import device_for
            x = x_for(a.in_features).to(device_for(a.base, a.base_weight()),
                                        a.base_weight().dtype)
            try:
                y = _call(a.host, x)
            except RecursionError as exc:
                v.status, v.error = "recursion", one_line(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - the user's forward raising is a finding
                v.status, v.error = "crash", one_line(exc)
                hinted = [o.in_features for o in adapters if o.name in v.static_forward_of]
                for w in _ordered(hinted + widths, set(widths)):  # where does it run? that names what
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


def _lw(m):
    from .adapters import linear_weight
    return linear_weight(m)


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
            if (w := _lw(m)) is not None and tuple(w.shape) == (out_f, width)]
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


def _owner_index(disc: Discovery) -> dict[int, Adapter]:
    """id(module) -> the adapter it belongs to (host, base, adapter module and its parts)."""
    index: dict[int, Adapter] = {}
    for a in disc.adapters:
        for m in (a.host, a.base):
            index.setdefault(id(m), a)
        if a.owner is not None and a.owner is not a.host:
            for m in a.owner.modules():
                index.setdefault(id(m), a)
    return index


def _static(v: LayerVerdict, a: Adapter, disc: Discovery, owners: dict[int, Adapter]) -> None:
    refs = forward_refs(a.host)
    if refs is None:
        return
    v.levels, v.names_forward, v.holds_self = refs.levels, refs.names_forward, refs.holds_self
    own = {id(m) for m in a.host.modules()} | {id(a.base)}
    if a.owner is not None:
        own |= {id(m) for m in a.owner.modules()}
    for via, m in refs.calls:
        if id(m) in own:
            continue
        other = owners.get(id(m))
        name = other.name if other is not None else canonical(disc.name_of(m) or type(m).__name__)
        if name != a.name:
            v.static_refs.append((via, "forward", name))
    for via, m in refs.uses:
        if id(m) in own:
            continue
        other = owners.get(id(m))
        if other is not None and other.name != a.name:
            kind = "forward" if (m is other.host or m is other.base) else "adapter"
            v.static_refs.append((via, kind, other.name))


# --- the adapted model on the probe batch ------------------------------------------------


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


def _logits(model, probe, conv=conv_.HF):
    return conv_.logits(model, probe, conv)  # (B, T, V)


@releasing
def _adapted_forward(ctx) -> ForwardResult:
    base = ctx.base_logits
    model = ctx.adapted
    res = ForwardResult(base_max_abs=float(base.abs().max()), rtol=tol(IDENTITY_RTOL, model_dtype(ctx)))
    with preserved(model, seed=ctx.seed), torch.no_grad():
        model.eval()
        try:
            logits = _logits(model, ctx.probe, ctx.convention)
        except Exception as exc:  # noqa: BLE001 - explained by LD201/LD401
            res.error = one_line(exc)
            return res
        res.finite = bool(torch.isfinite(logits).all())
        res.max_abs_diff = max_abs_diff(logits, base)
        del logits
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
            ref = F.linear(x, a.base_weight(), a.base_bias())
            deltas[a.name] = max(deltas.get(a.name, 0.0), float((out - ref).abs().max()))
        handles.append(a.host.register_forward_hook(hook))
    try:
        _logits(model, ctx.probe, ctx.convention)
    except Exception:  # noqa: BLE001 - the first forward ran; this one is only for locating
        pass
    finally:
        for h in handles:
            h.remove()
    return sorted(deltas.items(), key=lambda kv: -kv[1])


# --- one backward ------------------------------------------------------------------------


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
        model.train()  # the mode people train in: gradient checkpointing, dropout as in training
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


# --- persistence: round trip and merge ---------------------------------------------------


@dataclass
class Persistence:
    error: str | None = None          # the perturbed forward failed: nothing to compare
    fresh_error: str | None = None    # rebuilding a fresh copy failed
    logits_max_abs: float = 0.0
    rtol: float = 0.0
    merge_rtol: float = 0.0
    saved_keys: int = 0
    unregistered: list[str] = field(default_factory=list)
    roundtrip_diff: float | None = None
    not_restored: list[str] = field(default_factory=list)
    rounded: list[str] = field(default_factory=list)  # restored, but not bit for bit
    unexpected_keys: list[str] = field(default_factory=list)
    user_roundtrip: dict | None = None
    merge_diff: float | None = None
    merge_scaling: dict[str, float] = field(default_factory=dict)  # per adapter
    merge_scaling_source: str = "declared"
    merge_error: str | None = None


def persistence(ctx) -> Persistence:
    return ctx.memo("persistence", lambda: _persistence(ctx))


def _perturbation(a: Adapter, gen, scaling: float | None):
    """(A, B) values for the check: B random so the adapter adds something, A kept unless zero."""
    A = a.a_matrix().detach().float().cpu()
    if not bool(A.abs().max() > 0):
        A = torch.randn(a.rank, a.in_features, generator=gen) / math.sqrt(a.in_features)
    B = torch.randn(a.out_features, a.rank, generator=gen)
    s = abs(scaling) if scaling else 1.0
    delta = float((B @ A).norm()) * s
    w = float(a.base_weight().detach().float().norm())
    if delta > 0 and w > 0:
        B = B * (PERTURB_RELATIVE * w / delta)
    return A, B


@releasing
def _persistence(ctx) -> Persistence:
    from safetensors.torch import load_file, save_file

    model = ctx.adapted
    disc = discovery(ctx)
    adapters = disc.adapters
    dtype = model_dtype(ctx)
    res = Persistence(rtol=tol(ROUNDTRIP_RTOL, dtype), merge_rtol=tol(MERGE_RTOL, dtype))
    res.unregistered = [a.name for a in adapters if not a.registered]
    probe_scaling = {id(v.adapter): v.measured_scaling for v in module_probe(ctx).verdicts
                     if v.status == "ok"}
    keys = _keys(adapters)
    scaling, sources = {}, {}
    for k, a in zip(keys, adapters):
        if a.declared_scaling is not None:
            scaling[k], sources[k] = a.declared_scaling, "declared"
        elif probe_scaling.get(id(a)) is not None:
            scaling[k], sources[k] = probe_scaling[id(a)], "measured"
        else:
            scaling[k], sources[k] = 1.0, "assumed"
    res.merge_scaling = {f"{n}#{i}" if i else n: v for (n, i), v in scaling.items()}
    res.merge_scaling_source = max(set(sources.values()), key=list(sources.values()).count) \
        if sources else "declared"
    gen = torch.Generator().manual_seed(ctx.seed + 7)
    perturbed = {k: _perturbation(a, gen, scaling[k]) for k, a in zip(keys, adapters)}
    names = {id(t): n for n, t in model.state_dict(keep_vars=True).items()}
    adapter_keys = sorted({names[id(t)] for a in adapters for t in a.tensors() if id(t) in names})
    save_fn, load_fn = _user_save_load(ctx)
    with tempfile.TemporaryDirectory(prefix="loradoctor-") as tmp:
        tmp = Path(tmp)
        factors = [t for a in adapters for t in (a.A, a.B)]
        with preserved(model, factors, seed=ctx.seed), torch.no_grad():
            model.eval()
            for k, a in zip(keys, adapters):
                A, B = perturbed[k]
                a.set_factors(A.to(a.A.device, a.A.dtype), B.to(a.B.device, a.B.dtype))
            for k, a in zip(keys, adapters):  # the values as stored (rounded to their dtype)
                perturbed[k] = (a.a_matrix().detach().float().cpu().clone(),
                                a.b_matrix().detach().float().cpu().clone())
            try:
                reference = _logits(model, ctx.probe, ctx.convention).float()  # (B, T, V)
            except Exception as exc:  # noqa: BLE001
                res.error = one_line(exc)
                return res
            state = model.state_dict()
            save_file({k: state[k].detach().cpu().contiguous().clone() for k in adapter_keys},
                      str(tmp / "adapter.safetensors"))
            res.saved_keys = len(adapter_keys)
            user_error = None
            if save_fn is not None:
                try:
                    with user_code():
                        save_fn(model, str(tmp / "user_adapter.pth"))
                except Exception as exc:  # noqa: BLE001
                    user_error = f"{save_fn.__name__} raised {one_line(exc)}"
        res.logits_max_abs = float(reference.abs().max())

        # A fresh copy: the base model from disk, adapted again by the user's own code.
        try:
            with rng_preserved(ctx.seed), user_code():
                fresh = ctx.fresh_adapted()
            found = discover(fresh).adapters
            fresh_adapters = dict(zip(_keys(found), found))
        except SkipCheck:
            raise
        except Exception as exc:  # noqa: BLE001
            res.fresh_error = one_line(exc)
            return res
        initial = {n: (x.a_matrix().detach().clone(), x.b_matrix().detach().clone())
                   for n, x in fresh_adapters.items()}
        with torch.no_grad():
            fresh.eval()
            loaded = load_file(str(tmp / "adapter.safetensors"))
            result = fresh.load_state_dict(loaded, strict=False)
            res.unexpected_keys = list(result.unexpected_keys)
            back = _restoration(keys, adapters, fresh_adapters, perturbed, initial)
            res.not_restored, res.rounded = back["lost"], back["rounded"]
            res.roundtrip_diff = _max_diff(fresh, ctx.probe, reference, ctx.convention)

            if load_fn is not None:
                res.user_roundtrip = _user_roundtrip(fresh, fresh_adapters, initial, load_fn,
                                                     save_fn, tmp, user_error, keys, adapters,
                                                     perturbed, ctx.probe, reference,
                                                     ctx.convention)
            # Merge: W + scaling * B @ A into the fresh copy's base weights, adapters zeroed.
            try:
                for k, a in zip(keys, adapters):
                    fa = fresh_adapters.get(k)
                    if fa is None or a.layer_type not in ("linear", "embedding"):
                        continue
                    A, B = perturbed[k]
                    w = fa.base_weight()
                    merged = w.detach().float().cpu() + scaling[k] * (B @ A)
                    w.copy_(merged.to(w.device, w.dtype))
                    fa.set_factors(A.to(fa.A.device, fa.A.dtype),
                                   torch.zeros_like(B).to(fa.B.device, fa.B.dtype))
                res.merge_diff = _max_diff(fresh, ctx.probe, reference, ctx.convention)
            except Exception as exc:  # noqa: BLE001
                res.merge_error = one_line(exc)
        del fresh, reference
    return res


def _max_diff(model, probe, reference, conv=conv_.HF) -> float:
    return max_abs_diff(_logits(model, probe, conv), reference)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| (inf when either holds a NaN), with one full-size temporary only."""
    d = a.float() - b.float()
    d.abs_()
    if bool(torch.isnan(d).any()):
        return math.inf
    return float(d.max())


def _keys(adapters) -> list[tuple[str, int]]:
    """(name, n): the n-th adapter on that layer (a layer adapted twice has two)."""
    seen: dict[str, int] = {}
    out = []
    for a in adapters:
        seen[a.name] = seen.get(a.name, -1) + 1
        out.append((a.name, seen[a.name]))
    return out


def _restoration(keys, adapters, fresh_adapters, perturbed, initial) -> dict[str, Any]:
    """Which adapters a load restored into the fresh copy, judged against the perturbation.

    `lost`: adapters missing from the fresh copy, or with a factor still nearer its fresh
    start than the saved value (`RESTORED_WITHIN`). `rounded`: restored, but not bit for bit
    (a save in lower precision); `rounded_as` names that precision when every rounded value is
    exactly the saved one cast to fp16 (or bf16); `max_rel_error` is the largest
    ||loaded - saved|| / ||saved|| of a restored factor.
    """
    lost, rounded, casts, worst = [], [], {"fp16": True, "bf16": True}, 0.0
    for k, a in zip(keys, adapters):
        fa = fresh_adapters.get(k)
        if fa is None:
            lost.append(a.name)
            continue
        loaded = (fa.a_matrix().detach().float().cpu(), fa.b_matrix().detach().float().cpu())
        start = tuple(t.detach().float().cpu() for t in initial[k]) if k in initial else None
        exact, restored, errors, cast = True, True, [], {"fp16": True, "bf16": True}
        for got, saved, init in zip(loaded, perturbed[k], start or (None, None)):
            if got.shape != saved.shape:
                restored = False
                break
            if torch.equal(got, saved):
                continue
            exact = False
            dist, size = float((got - saved).norm()), float(saved.norm())
            moved = float((saved - init).norm()) if init is not None else size
            restored = restored and dist <= RESTORED_WITHIN * max(moved, size)
            errors.append(dist / size if size else math.inf)
            for name, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
                cast[name] = cast[name] and torch.equal(got, saved.to(dt).float())
        if not restored:
            lost.append(a.name)
        elif not exact:
            rounded.append(a.name)
            worst = max(worst, *errors)
            casts = {n: casts[n] and cast[n] for n in casts}
    rounded_as = next((n for n, ok in casts.items() if ok), None) if rounded else None
    return {"lost": lost, "rounded": rounded, "rounded_as": rounded_as, "max_rel_error": worst}


def _user_roundtrip(fresh, fresh_adapters, initial, load_fn, save_fn, tmp, user_error,
                    keys, adapters, perturbed, probe, reference, conv=conv_.HF) -> dict:
    out = {"save": save_fn.__name__, "load": load_fn.__name__, "error": user_error}
    if user_error is not None:
        return out
    for n, fa in fresh_adapters.items():  # back to what the fresh copy was built with
        fa.set_factors(*initial[n])
    try:
        with user_code():
            load_fn(fresh, str(tmp / "user_adapter.pth"))
    except Exception as exc:  # noqa: BLE001
        out["error"] = f"{load_fn.__name__} raised {one_line(exc)}"
        return out
    back = _restoration(keys, adapters, fresh_adapters, perturbed, initial)
    out["not_restored"], out["rounded"] = back["lost"], back["rounded"]
    out["rounded_as"], out["max_rel_error"] = back["rounded_as"], back["max_rel_error"]
    out["diff"] = _max_diff(fresh, probe, reference, conv)
    for n, fa in fresh_adapters.items():
        fa.set_factors(*initial[n])
    return out


def _user_save_load(ctx):
    """The user's own save/load pair beside the apply function (e.g. save_lora / load_lora)."""
    fn = ctx.apply_fn
    glb = getattr(fn, "__globals__", None)
    if not isinstance(glb, dict):
        return None, None
    for save_name, load_name in SAVE_LOAD_NAMES:
        save, load = glb.get(save_name), glb.get(load_name)
        if callable(save) and callable(load) and _takes_two(save) and _takes_two(load):
            return save, load
    return None, None


def _takes_two(fn) -> bool:
    try:
        inspect.signature(fn).bind(None, None)
        return True
    except (TypeError, ValueError):
        return False


def torch_version() -> str:
    return str(torch.__version__).split("+")[0]


def weights_only_by_default() -> bool:
    """torch.load unpickles only tensors and plain containers by default since torch 2.6."""
    return torch.torch_version.TorchVersion(torch_version()) >= "2.6"


def unsafe_torch_loads(ctx) -> list[dict[str, Any]]:
    """`torch.load(...)` calls without `weights_only=True` in the user's apply module."""
    import ast

    fn = ctx.apply_fn
    try:
        path = inspect.getsourcefile(fn) if fn is not None else None
    except TypeError:
        path = None
    if not path or not Path(path).is_file():
        return []
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
        return []
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        is_load = (isinstance(f, ast.Attribute) and f.attr == "load"
                   and isinstance(f.value, ast.Name) and f.value.id == "torch")
        if not is_load:
            continue
        wo = next((k for k in node.keywords if k.arg == "weights_only"), None)
        if wo is not None and isinstance(wo.value, ast.Constant) and wo.value.value is True:
            continue
        explicit = wo is not None and isinstance(wo.value, ast.Constant) and wo.value.value is False
        found.append({"file": path, "line": node.lineno, "explicit_false": explicit,
                      "code": ast.get_source_segment(Path(path).read_text(encoding="utf-8"), node)})
    return found
