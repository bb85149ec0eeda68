"""Persistence: the adapters saved and loaded into a fresh copy, and merged into its weights.

`persistence(ctx)` (LD501, LD502): every adapter's B (and a zero A) set to random values so
neither check is trivial, the logits and the adapter state taken from the user's model as
built and saved; a fresh copy rebuilt from disk with the user's own code, the state loaded
into it (and, when the apply module defines one, through the user's own save/load pair);
then `W + scaling * B @ A` merged into its base weights. A quantized base (QLoRA) is merged
dequantized: the fresh copy's quantized layers become fp32 layers holding their dequantized
weights, the merge is compared with the adapters unmerged on those same weights (a quantized
kernel computes otherwise: LLM.int8 on a GPU quantizes the activations too, which no merge
could reproduce), and the merge's requantization is measured on top (`quantized_merge`).
Everything that perturbs runs inside `safety.preserved`, so the user's model comes back exactly
as it was.

The user's own save/load pair beside the apply function and the keys that tell two adapters
on one layer apart (`shared.user_save_load`, `shared.adapter_keys`) serve check-adapter too.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .adapters import Adapter, discover
from .layer_probe import module_probe
from .memory import releasing
from .quantized import float_copies
from .quantized_merge import Requantization, requantization
from .safety import preserved, rng_preserved
from .shared import (MERGE_RTOL, ROUNDTRIP_RTOL, adapter_keys, discovery, logits, logits_diff,
                     max_abs_diff, model_dtype, tol, user_code, user_save_load)
from ..rules import SkipCheck
from ..text import one_line

PERTURB_RELATIVE = 0.05       # ||scaling * B @ A|| / ||W|| after the persistence perturbation
# Round trip: a factor counts as restored when its loaded value lies within this share of the
# saved value's distance from the fresh copy's own start (or of the saved value's size, when
# larger). Rounding to fp16 (2^-11) or bf16 (2^-8) stays far inside it; a factor left at its
# fresh initialisation is a whole perturbation away.
RESTORED_WITHIN = 0.01



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
    merge_unmeasured: str | None = None  # why the merge cannot be rebuilt (LD502 skips)
    requantization: Requantization | None = None  # a quantized base: the merge requantized


def persistence(ctx) -> Persistence:
    return ctx.memo("persistence", lambda: _persistence(ctx))


@dataclass
class _FreshCopy:
    """The fresh copy the saved adapters are loaded into, and what a load is judged against."""

    model: Any
    adapters: dict[tuple[str, int], Adapter]      # its adapters by key
    initial: dict[tuple[str, int], tuple]         # key -> (A, B) as the copy built them
    keys: list[tuple[str, int]]                   # the saved model's adapters: keys, in order
    saved: list[Adapter]
    perturbed: dict[tuple[str, int], tuple]       # key -> (A, B) as saved (fp32, CPU)
    probe: dict
    reference: Any                                # the saved model's logits (B, T, V)
    conv: Any

    def restoration(self) -> dict[str, Any]:
        return _restoration(self.keys, self.saved, self.adapters, self.perturbed, self.initial)

    def diff(self) -> float:
        return logits_diff(self.model, self.probe, self.reference, self.conv)

    def reset(self) -> None:
        """Every adapter back to what the fresh copy was built with."""
        for k, fa in self.adapters.items():
            fa.set_factors(*self.initial[k])


@releasing
def _persistence(ctx) -> Persistence:
    adapters = discovery(ctx).adapters
    dtype = model_dtype(ctx)
    res = Persistence(rtol=tol(ROUNDTRIP_RTOL, dtype), merge_rtol=tol(MERGE_RTOL, dtype))
    res.unregistered = [a.name for a in adapters if not a.registered]
    keys = adapter_keys(adapters)
    scaling = _merge_scaling(ctx, keys, adapters, res)
    gen = torch.Generator().manual_seed(ctx.seed + 7)
    perturbed = {k: _perturbation(a, gen, scaling[k]) for k, a in zip(keys, adapters)}
    save_fn, load_fn, _ = user_save_load(ctx.apply_fn)
    with tempfile.TemporaryDirectory(prefix="loradoctor-") as tmp:
        tmp = Path(tmp)
        saved = _save_perturbed(ctx, keys, adapters, perturbed, save_fn, tmp, res)
        if saved is None:
            return res
        reference, user_error = saved
        res.logits_max_abs = float(reference.abs().max())
        try:  # the base model from disk, adapted again by the user's own code
            # Seeded apart from the model's own adapters (built with ctx.seed): the fresh
            # copy's random start must differ from the saved one for a lost A to show.
            with rng_preserved(ctx.seed + 1), user_code():
                fresh = ctx.fresh_adapted()
            found = discover(fresh).adapters
        except SkipCheck:
            raise
        except Exception as exc:  # noqa: BLE001
            res.fresh_error = one_line(exc)
            return res
        copy = _FreshCopy(fresh, dict(zip(adapter_keys(found), found)), {}, keys, adapters,
                          perturbed, ctx.probe, reference, ctx.convention)
        copy.initial = {k: (x.a_matrix().detach().clone(), x.b_matrix().detach().clone())
                        for k, x in copy.adapters.items()}
        with torch.no_grad():
            fresh.eval()
            _load_saved(copy, tmp / "adapter.safetensors", res)
            if load_fn is not None:
                res.user_roundtrip = _user_roundtrip(copy, save_fn, load_fn,
                                                     tmp / "user_adapter.pth", user_error)
            _merge_measured(copy, scaling, res)
        del fresh, reference, copy
    return res


def _merge_scaling(ctx, keys, adapters, res: Persistence) -> dict[tuple[str, int], float]:
    """Each adapter's scaling for the merge: the one it declares, else the one the per-layer
    probe measured, else 1 (assumed); the figures and their usual source go on `res`."""
    probe_scaling = {id(v.adapter): v.measured_scaling for v in module_probe(ctx).verdicts
                     if v.status == "ok"}
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
    return scaling


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


def _save_perturbed(ctx, keys, adapters, perturbed, save_fn, tmp: Path,
                    res: Persistence) -> tuple[torch.Tensor, str | None] | None:
    """The user's model with its factors set to `perturbed`: its logits taken, its adapter
    state saved as safetensors (and with the user's own save function, when there is one);
    `perturbed` then holds the values as stored (rounded to their dtype). Returns (logits, the
    user's save error), or None when the forward raises (`res.error` says why)."""
    from safetensors.torch import save_file

    model = ctx.adapted
    names = {id(t): n for n, t in model.state_dict(keep_vars=True).items()}
    state_keys = sorted({names[id(t)] for a in adapters for t in a.tensors() if id(t) in names})
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
            reference = logits(model, ctx.probe, ctx.convention).float()  # (B, T, V)
        except Exception as exc:  # noqa: BLE001
            res.error = one_line(exc)
            return None
        state = model.state_dict()
        save_file({k: state[k].detach().cpu().contiguous().clone() for k in state_keys},
                  str(tmp / "adapter.safetensors"))
        res.saved_keys = len(state_keys)
        user_error = None
        if save_fn is not None:
            try:
                with user_code():
                    save_fn(model, str(tmp / "user_adapter.pth"))
            except Exception as exc:  # noqa: BLE001
                user_error = f"{save_fn.__name__} raised {one_line(exc)}"
    return reference, user_error


def _load_saved(copy: _FreshCopy, file: Path, res: Persistence) -> None:
    """Our safetensors file loaded into the fresh copy by name: what it restored, and the
    logits against the saved model's."""
    from safetensors.torch import load_file

    result = copy.model.load_state_dict(load_file(str(file)), strict=False)
    res.unexpected_keys = list(result.unexpected_keys)
    back = copy.restoration()
    res.not_restored, res.rounded = back["lost"], back["rounded"]
    res.roundtrip_diff = copy.diff()


def _merge_measured(copy: _FreshCopy, scaling: dict, res: Persistence) -> None:
    """The merge (LD502); into a quantized base, dequantized, then requantized."""
    replaced = float_copies(copy.model)  # quantized layer -> fp32 layer; {} for full precision
    if not replaced:
        _merge(copy, scaling, res)
        return
    found = discover(copy.model).adapters  # the same adapters, on the fp32 layers now
    before, copy.adapters = copy.adapters, dict(zip(adapter_keys(found), found))
    lost = [k for k in before if k not in copy.adapters]
    if lost:  # adapters held inside a quantized layer, called from its patched forward
        res.merge_unmeasured = (
            f"{len(lost)} adapters live inside the quantized layers they adapt (their forward "
            f"patched per instance), so no dequantized copy of those layers can run them; "
            f"merge into a base loaded in bf16 or fp32 to measure it")
        return
    if all(p.dtype == torch.float32 for p in copy.model.parameters() if p.is_floating_point()):
        # Both sides now compute in fp32 on the same weights (QLoRA keeps the adapters, norms
        # and embeddings in fp32): fp32's tolerance, not the quantized kernel's compute dtype.
        res.merge_rtol = tol(MERGE_RTOL, torch.float32)
    _set_saved_factors(copy, keep_b=True)  # the adapters as saved, on the dequantized base
    adapted = logits(copy.model, copy.probe, copy.conv).float()  # (B, T, V)
    _set_saved_factors(copy, keep_b=False)  # the base alone: the saved A, B zero
    unmerged = logits(copy.model, copy.probe, copy.conv).float()  # (B, T, V)
    merged = _merge(copy, scaling, res, reference=adapted)
    del adapted
    originals = {id(linear): layer for linear, layer in replaced.values()}
    layers = [(fa.base, originals[id(fa.base)]) for k, fa in copy.adapters.items()
              if id(fa.base) in originals and fa.layer_type == "linear"]
    if merged is not None and layers:
        res.requantization = requantization(copy.model, copy.probe, copy.conv, layers,
                                            unmerged, merged)


def _set_saved_factors(copy: _FreshCopy, keep_b: bool) -> None:
    """Each adapter of the fresh copy set to the saved A and B (or B zero)."""
    for k in copy.keys:
        if k in copy.adapters:
            A, B = copy.perturbed[k]
            fa = copy.adapters[k]
            fa.set_factors(A.to(fa.A.device, fa.A.dtype),
                           (B if keep_b else torch.zeros_like(B)).to(fa.B.device, fa.B.dtype))


def _merge(copy: _FreshCopy, scaling: dict, res: Persistence,
           reference: torch.Tensor | None = None) -> torch.Tensor | None:
    """W + scaling * B @ A into the fresh copy's base weights, adapters zeroed, then its
    logits against `reference` (the saved model's, unless given); returns those logits (None
    when the merge failed)."""
    try:
        for k, a in zip(copy.keys, copy.saved):
            fa = copy.adapters.get(k)
            if fa is None or a.layer_type not in ("linear", "embedding"):
                continue
            A, B = copy.perturbed[k]
            w = fa.base_weight()
            merged = w.detach().float().cpu() + scaling[k] * (B @ A)
            w.copy_(merged.to(w.device, w.dtype))
            fa.set_factors(A.to(fa.A.device, fa.A.dtype),
                           torch.zeros_like(B).to(fa.B.device, fa.B.dtype))
        merged = logits(copy.model, copy.probe, copy.conv).float()  # (B, T, V)
        res.merge_diff = max_abs_diff(merged, copy.reference if reference is None else reference)
        return merged
    except Exception as exc:  # noqa: BLE001
        res.merge_error = one_line(exc)
        return None


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


def _user_roundtrip(copy: _FreshCopy, save_fn, load_fn, file: Path,
                    user_error: str | None) -> dict:
    """The user's own load function on the file their save function wrote, into the fresh
    copy set back to its start: what it restored, and the logits against the saved model's."""
    out = {"save": save_fn.__name__, "load": load_fn.__name__, "error": user_error}
    if user_error is not None:
        return out
    copy.reset()
    try:
        with user_code():
            load_fn(copy.model, str(file))
    except Exception as exc:  # noqa: BLE001
        out["error"] = f"{load_fn.__name__} raised {one_line(exc)}"
        return out
    back = copy.restoration()
    out["not_restored"], out["rounded"] = back["lost"], back["rounded"]
    out["rounded_as"], out["max_rel_error"] = back["rounded_as"], back["max_rel_error"]
    out["diff"] = copy.diff()
    copy.reset()
    return out
