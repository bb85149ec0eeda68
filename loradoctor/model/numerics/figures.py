"""The numerics of one check-model run, measured once per run (`ctx.memo("numerics")`), and the
figures the LD3xx rules read from them.

`numerics(ctx)` runs the passes of `passes.py` on the adapted model and puts their figures in
the report's summary; `measured_pass` is a dtype's pass or the reason (a skip) it is not
there; `lost_by_side` splits fp16's lost gradient values between the adapters and a base that
trains too; `scaler_estimate` says what a GradScaler would keep; `simulated_adamw` performs
one AdamW step on fp16 trainable parameters against the same step in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...rules import SkipCheck
from .passes import (FP16_MAX, FP16_TINY, DtypePass, Measurement, NumericsOptions, ReferencePass,
                     fp32_pass, measure)
from .verdict import dtype_verdicts, headroom, verdict_line


def options(ctx) -> NumericsOptions:
    factor = getattr(ctx, "fp16_headroom", None)
    return NumericsOptions(fp16_headroom=float(factor)) if factor else NumericsOptions()


def numerics(ctx) -> Measurement:
    """The passes, measured once per run; their figures also go to the report's summary."""
    def compute() -> Measurement:
        from ...progress import progress

        model = ctx.adapted
        opts = options(ctx)
        n = 1 + len([d for d in (ctx.dtypes or ("bf16", "fp16")) if d != "fp32"])
        with progress(ctx, "numerics: fp32, bf16, fp16 passes", total=n) as advance:
            fp32 = reference(ctx)
            m = measure(model, ctx.probe, dtypes=ctx.dtypes, device=ctx.device, options=opts,
                        on_pass=lambda _p: advance(1), convention=ctx.convention,
                        emulate=() if getattr(ctx, "real_dtypes", False) else None,
                        reference=fp32)
            fp32.ref = None  # the fp32 logits, (B, T, V): every dtype has been compared with them
        ctx.summary["numerics"] = summary_figures(m, opts, adapter_lost_fraction(ctx, m))
        if m.quantized is not None and isinstance(ctx.summary.get("quantized_base"), dict):
            ctx.summary["quantized_base"]["numerics"] = m.quantized  # what was measured
        return m
    return ctx.memo("numerics", compute)


def reference(ctx) -> ReferencePass:
    """The fp32 pass, measured once per run (with the torch RNG seeded as the identity forward
    seeds it): the first of the numerics passes, and LD401's forward where the numerics run
    anyway (`shared_fp32_logits`)."""
    def compute() -> ReferencePass:
        from ..safety import rng_preserved  # imports torch: the rules' modules must stay light

        with rng_preserved(ctx.seed):
            return fp32_pass(ctx.adapted, ctx.probe, device=ctx.device, options=options(ctx),
                             convention=ctx.convention)
    return ctx.memo("numerics_reference", compute)


def shared_fp32_logits(ctx):
    """The adapted model's (B, T, V) logits on the probe batch from the numerics' fp32 pass, or
    None where that pass is not exactly the model's own eval forward, or will not run.

    Shared only when an LD3xx rule is among the rules this run runs (`ctx.planned_rules`), every
    floating parameter and buffer is fp32 already (the pass casts nothing), no layer is
    quantized (it would compute in fp32 there) and the pass ran: then it is the identity
    forward's computation (eval mode, the same batch, the RNG seeded the same), with hooks that
    only read, and one forward of the model is saved. Else the caller runs its own forward.
    """
    planned = getattr(ctx, "planned_rules", None) or ()
    if not any(code.startswith("LD3") for code in planned):
        return None
    import torch

    from ..quantized import numerics_note

    model = ctx.adapted
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in tensors) \
            or numerics_note(model) is not None:
        return None
    fp32 = reference(ctx)
    return fp32.ref.logits if fp32.result.ran and fp32.ref is not None else None


def adapter_lost_fraction(ctx, m: Measurement) -> float | None:
    """fp16's lost share of the adapters' gradients when the base trains too (else None)."""
    if "fp16" not in m.requested or m.get("fp16") is None or not m.get("fp16").ran:
        return None
    split = lost_by_side(ctx, m, 2.0 ** 16)
    return split[0]["adapters"]["lost_fraction"] if split is not None else None


def summary_figures(m: Measurement, opts: NumericsOptions,
                    lost_fraction: float | None = None) -> dict:
    peak = m.fp32_peak if m.fp32.ran else None
    out = {
        "verdict": verdict_line(dtype_verdicts(m, opts, lost_fraction)) if m.fp32.ran else None,
        "probe_shape": list(m.probe_shape),
        "fp32_peak": peak.peak if peak else None,
        "fp32_peak_module": peak.name if peak else None,
        "fp16_headroom": round(headroom(peak.peak), 3) if peak else None,
        "dtypes": {},
        "seconds": round(m.seconds, 3),
        "emulated": list(m.emulated),  # dtypes whose matmuls and attention ran in fp32 (CPU)
    }
    for dtype, p in m.passes.items():
        bad = p.first_bad_forward or p.first_bad_backward
        out["dtypes"][dtype] = {
            "status": p.status, "error": p.error, "loss": p.loss,
            "seconds": round(p.seconds, 3),
            "first_nonfinite": bad.name if bad else None,
            "loss_rel_diff": p.loss_rel_diff, "logits_max_abs_diff": p.logits_max_abs_diff,
            "grad_cosine": p.grad_cosine,
            "grad_lost_fraction": p.grad_lost_fraction if dtype != "fp32" else None,
        }
    return out


def reference_pass(m: Measurement) -> DtypePass:
    """The fp32 pass, or a skip when it raised: nothing to compare against."""
    if not m.fp32.ran:
        raise SkipCheck(f"the model's fp32 forward+backward on the probe batch raised "
                        f"{m.fp32.error}: nothing to compare against (see the wiring checks)")
    return m.fp32


def measured_pass(m: Measurement, dtype: str, ctx) -> DtypePass:
    """The measured pass of `dtype`, or the reason (SkipCheck) it is not there."""
    if dtype not in m.requested:
        raise SkipCheck(f"{dtype} not checked (--dtypes {','.join(m.requested)})")
    ref = reference_pass(m)
    p = m.get(dtype)
    if p.status == "unsupported":
        raise SkipCheck(p.error, environment=True)
    if not p.ran:
        raise SkipCheck(f"the {dtype} pass could not run on {ctx.device}: {p.error}",
                        environment=True)
    if not ref.finite:
        raise SkipCheck("the fp32 reference pass is itself not finite (LD300): nothing to "
                        "compare against")
    return p


def lost_by_side(ctx, m: Measurement, scale: float) -> tuple[dict, set] | None:
    """Lost fp16 gradient values of the adapters and of the base, when both train (else None).

    Per side: `lost` (non-zero in fp32, exactly zero in fp16), `nonzero` (in fp32) and
    `below_scaled` (fp32 values a GradScaler at `scale` would still leave below fp16's range),
    over the same sampled gradient values as the totals; with the adapters' tensor names.
    """
    from ..shared import discovery  # imports torch: the rules' modules must stay light

    disc = discovery(ctx)
    if not disc.adapters:
        return None
    ids = disc.adapter_param_ids()
    adapter_names = {n for n, p in ctx.adapted.named_parameters() if id(p) in ids}
    ref, got = m.grad_samples.get("fp32", {}), m.grad_samples.get("fp16", {})
    sides = {side: {"lost": 0, "nonzero": 0, "below_scaled": 0} for side in ("adapters", "base")}
    for name, r in ref.items():
        g = got.get(name)
        if g is None:
            continue
        side = sides["adapters" if name in adapter_names else "base"]
        a = r.float().abs()
        nz = a > 0
        side["lost"] += int((nz & (g == 0)).sum())
        side["nonzero"] += int(nz.sum())
        side["below_scaled"] += int((nz & (a * scale < FP16_TINY / 2)).sum())
    for side in sides.values():
        side["lost_fraction"] = side["lost"] / side["nonzero"] if side["nonzero"] else 0.0
    return (sides, adapter_names) if sides["base"]["nonzero"] else None


@dataclass
class ScalerEstimate:
    """What a GradScaler would keep of the fp32 gradient values, against fp16's range."""

    scale: float         # the scale it settles at (backed off until the scaled peak fits)
    below: int           # non-zero fp32 values below fp16's range without scaling
    below_scaled: int    # ... and still below it at `scale`
    nonzero: int         # non-zero fp32 values (sampled)


def scaler_estimate(m: Measurement, opts: NumericsOptions) -> ScalerEstimate:
    """The fp32 gradients times the scale a GradScaler would use, against fp16's range."""
    scale = opts.scaler_scale
    grad_peak = m.fp32_grad_peak
    if grad_peak is not None and grad_peak.grad_peak > 0:
        while scale > 1 and grad_peak.grad_peak * scale >= FP16_MAX:
            scale /= 2  # GradScaler backs off until the scaled gradients fit
    below = below_scaled = nonzero = 0
    for g in m.grad_samples.get("fp32", {}).values():
        a = g.float().abs()
        nz = a > 0
        nonzero += int(nz.sum())
        below += int((nz & (a < FP16_TINY / 2)).sum())
        below_scaled += int((nz & (a * scale < FP16_TINY / 2)).sum())
    return ScalerEstimate(scale, below, below_scaled, nonzero)


@dataclass
class AdamwStep:
    """One simulated AdamW step on the fp16 trainable parameters' sampled values."""

    source: str          # the pass whose gradients were used ("fp16", else "fp32")
    values: int = 0      # values stepped
    nonfinite: int = 0   # nan/inf after the fp16 step
    lost: int = 0        # updates the fp16 step loses that the fp32 step keeps


def simulated_adamw(ctx, m: Measurement, half: list, opts: NumericsOptions) -> AdamwStep:
    """One `torch.optim.AdamW` step on each fp16 trainable tensor in `half` (sampled values,
    as the user's code keeps them) and on the same values in fp32, on the fp16 pass's
    gradients (else fp32's)."""
    import torch

    step = AdamwStep("fp16" if "fp16" in m.grad_samples else "fp32")
    params = dict(ctx.adapted.named_parameters())
    for t in half:
        p = params.get(t.name)
        if p is None or t.name not in m.grad_samples.get(step.source, {}):
            continue
        value = p.detach().reshape(-1)[:: m.sample_stride].clone()  # fp16, as your code keeps it
        grad = m.grad_samples[step.source][t.name].to(torch.float16)
        after16 = adamw_step(value, grad, opts)
        after32 = adamw_step(value.float(), grad.float(), opts)
        step.values += value.numel()
        step.nonfinite += int((~torch.isfinite(after16)).sum())
        step.lost += int((torch.isfinite(after16) & (after16 == value)
                          & (after32 != value.float())).sum())
    return step


def adamw_step(value, grad, opts: NumericsOptions):
    """One torch.optim.AdamW step on a copy of `value` with gradient `grad` (same dtype)."""
    import torch

    p = torch.nn.Parameter(value.clone())
    p.grad = grad.clone()
    opt = torch.optim.AdamW([p], lr=opts.adamw_lr, eps=opts.adamw_eps,
                            weight_decay=opts.adamw_weight_decay)
    opt.step()
    return p.detach()
