"""LD3xx: fp16 / bf16 / fp32 on one probe batch: overflow, headroom, divergence, optimizer dtype.

The measurement (`loradoctor.model.numerics.passes`) runs once per check-model, through
`ctx.memo("numerics", ...)` (`model/numerics/figures.py`): one forward+backward of the adapted
model per dtype, with hooks on every module, the model cast in place and restored exactly. Each
rule reads its figures and judges them against a named option (`NumericsOptions`); the verdict
line of LD300 sums them up.
"""

from __future__ import annotations

import math

from ..findings import Severity, Status, Table
from ..model.numerics.figures import (adapter_lost_fraction, lost_by_side, measured_pass,
                                      numerics, options, reference_pass, scaler_estimate,
                                      simulated_adamw)
from ..model.numerics.passes import FP16_MAX, DtypePass, NumericsOptions
from ..model.numerics.verdict import (backward_overflow_at, bf16_clean, divergence, dtype_verdicts,
                                      fmt, headroom, measured_how, near_limit, nonfinite_word,
                                      overflow_at, pct, times, verdict_line)
from ..rules import Outcome, SkipCheck, rule


# --- LD300 -----------------------------------------------------------------------------------


@rule("LD300", "numerics-verdict", command="model", severity=Severity.INFO,
      runs_offloaded=False)
def numerics_verdict(ctx) -> Outcome:
    """Which of fp32 / bf16 / fp16 this model and batch can train in, measured on one batch.

    ## What it does
    Runs the same probe batch through the adapted model once per dtype (fp32 as the
    reference, then bf16 and fp16 where the device runs them, or the ones `--dtypes` names),
    forward **and** backward, with a hook on every module. Each dtype gets a mark: `✓` trains,
    `!` trains with a caveat (little fp16 headroom, gradients that need a GradScaler, a
    departure from fp32), `✗` produces inf/nan, `-` could not run here. The line names the
    first module that went inf/nan and its fp32 peak, and a table lists loss, divergence,
    gradient underflow and time per dtype. LD301-LD305 explain each mark.

    A pass is `model.to(dtype)` semantics: base and adapters in that dtype, no autocast, no
    loss scaling, eval mode. The model is cast in place one dtype at a time and restored
    exactly (same tensors, dtypes, flags, modes and RNG states). On a quantized base (QLoRA)
    nothing is cast: its quantized layers compute in each dtype (bitsandbytes' compute dtype,
    the configured one always among the passes) and every other parameter stays as loaded,
    as QLoRA trains; the table's title and the summary say so. On a CPU, torch's fp16 kernels
    (and its bf16 ones, where the CPU has no native bf16) take many times fp32's: there their
    matmuls and attention run as a GPU's do, in fp32 on the dtype's values with each result
    rounded to the dtype, every other op in the dtype itself (`--real-dtypes` runs torch's own
    kernels instead); the table's title says which dtypes were emulated.

    ## Why is this bad?
    It is the summary, not a fault. An error here means the fp32 reference itself is not
    finite: nothing can be trained until that is fixed, whatever the dtype.

    ## Example
    ```
    LD300 numerics-verdict  trains in: fp32 ✓ · bf16 ✓ (loss within 0.05%) · fp16 ✗ (inf at
          model.layers.1.mlp.down_proj, fp32 peak 163,840 > 65,504)
    ```

    ## Use instead
    Train in a dtype marked `✓`; read the LD3xx finding behind a `!` or `✗`.
    """
    m = numerics(ctx)
    ref = reference_pass(m)
    opts = options(ctx)
    verdicts = dtype_verdicts(m, opts, adapter_lost_fraction(ctx, m))
    rows = []
    by_dtype = {v.dtype: v for v in verdicts}
    for dtype in ("fp32", "bf16", "fp16"):
        if dtype not in by_dtype:
            continue
        p, v = m.get(dtype), by_dtype[dtype]
        mark = {"ok": "✓", "warn": "!", "fail": "✗", "skip": "-"}[v.status]
        if p is None or not p.ran:
            rows.append([dtype, mark, "not run", "-", "-", "-", "-"])
            continue
        loss = "-" if p.loss is None else f"{p.loss:.4f}"
        if p.loss_rel_diff is not None and math.isfinite(p.loss_rel_diff):
            loss += f" ({pct(p.loss_rel_diff)})"
        rows.append([
            dtype, mark, loss,
            "-" if p.logits_max_abs_diff is None else fmt(p.logits_max_abs_diff),
            "-" if p.grad_cosine is None else f"{p.grad_cosine:.4f}",
            "-" if dtype == "fp32" or not p.backward else pct(p.grad_lost_fraction),
            f"{p.seconds:.2f}s",
        ])
    how = "with the quantized layers computing in each dtype" if m.quantized else "in each dtype"
    emulated = measured_how(m)
    table = Table(f"probe batch {tuple(m.probe_shape)} {how}, against fp32"
                  + (f"; {emulated}" if emulated else ""),
                  ["dtype", "", "loss (Δ)", "max |Δlogit|", "grad cosine", "grads lost",
                   "time"], rows)
    findings = []
    if not ref.finite:
        bad = ref.first_bad_forward or ref.first_bad_backward
        where = bad.name if bad else "the loss"
        findings.append(numerics_verdict.finding(
            f"the fp32 reference pass is not finite: first inf/nan at {where} (loss {ref.loss}); "
            f"no dtype can train this model as it is",
            location=bad.name if bad else None, severity=Severity.ERROR,
            evidence={"loss": ref.loss, "module": bad.name if bad else None},
            fix="find what makes fp32 non-finite first (labels, init, wiring): the other "
                "model checks name it"))
    return Outcome(findings, summary=verdict_line(verdicts), views=[table],
                   status=None if findings else Status.PASS)


# --- LD301 -----------------------------------------------------------------------------------


@rule("LD301", "fp16-overflow", command="model", severity=Severity.ERROR,
      runs_offloaded=False)
def fp16_overflow(ctx) -> Outcome:
    """A module's output is inf or nan in fp16 where fp32 is finite: fp16 training produces NaN.

    ## What it does
    Runs the probe batch through the model cast to fp16 and finds the first module, in
    execution order, whose output contains inf or nan while its fp32 output is finite. Reports
    that module, its fp32 peak against fp16's largest finite value (65,504), how many modules
    exceed it in fp32, and whether bf16 was measured clean on the same batch.

    ## Why is this bad?
    fp16 has 5 exponent bits: anything past 65,504 becomes inf, and inf - inf or 0 * inf in the
    next op becomes nan. The loss is nan from the first step, and no learning rate or gradient
    scaler fixes it: the forward itself overflows. Pretrained models with large MLP outputs or
    residual activations are known to do this (T5: 66,246 in the feed-forward output,
    transformers #14189; Gemma-3 and Qwen2 fp16 fine-tunes), while bf16, with fp32's exponent
    range, runs the same model clean.

    ## Example
    ```python
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float16)  # peaks at 163,840
    model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
    # loss: nan from step 0
    ```

    ## Use instead
    ```python
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    # or keep the weights (and so the residual stream) in fp32 and train under
    # torch.autocast("cuda", dtype=torch.float16) with a GradScaler
    ```
    """
    m = numerics(ctx)
    p16 = measured_pass(m, "fp16", ctx)
    opts = options(ctx)
    hit = overflow_at(m)
    if hit is None:
        if p16.first_bad_forward is not None:  # fp32 is non-finite there too: not fp16's doing
            return Outcome(summary="the fp32 reference is non-finite at the same module (LD300)")
        peak = m.fp32_peak
        room = headroom(peak.peak) if peak else math.inf
        return Outcome(summary=f"fp16 forward finite; largest fp32 output {fmt(peak.peak)} at "
                               f"{peak.name} ({times(room)} below {fmt(FP16_MAX)})" if peak else
                               "fp16 forward finite")
    bad, ref = hit
    over = [s for s in m.fp32.modules if s.finite and s.peak >= FP16_MAX]
    clean, bf16_sentence = bf16_clean(m, opts)
    word = nonfinite_word(bad.peak)
    if ref.peak >= FP16_MAX:
        why = f"its fp32 output peaks at {fmt(ref.peak)}, past fp16's largest value {fmt(FP16_MAX)}"
    else:
        why = (f"its fp32 output peaks at {fmt(ref.peak)}, so a value inside it (or an input "
               f"already rounded in fp16) passes {fmt(FP16_MAX)}")
    message = (f"first module to output {word} in fp16: {why}; {len(over)} module outputs "
               f"exceed {fmt(FP16_MAX)} in fp32 and the fp16 loss is {p16.loss}")
    if clean:
        fix = f"train in bf16 ({bf16_sentence}), or keep the residual stream in fp32 (fp32 " \
              f"weights under torch.autocast)"
    elif clean is None:
        fix = f"train in bf16 (same range as fp32; {bf16_sentence}), or keep the residual " \
              f"stream in fp32 (fp32 weights under torch.autocast)"
    else:
        fix = f"train in fp32 or with fp32 weights under autocast ({bf16_sentence})"
    finding = fp16_overflow.finding(
        message, location=bad.name,
        evidence={"module": bad.name, "fp32_peak": ref.peak, "fp16_max": FP16_MAX,
                  "fp16_value": word, "fp16_loss": p16.loss,
                  "modules_over_fp16_max_in_fp32": [s.name for s in over[:20]],
                  "n_modules_over_fp16_max_in_fp32": len(over), "bf16_clean": clean},
        fix=fix)
    return Outcome([finding], summary=f"{word} at {bad.name}, fp32 peak {fmt(ref.peak)} > "
                                      f"{fmt(FP16_MAX)}" if ref.peak >= FP16_MAX else
                                      f"{word} at {bad.name}")


# --- LD302 -----------------------------------------------------------------------------------


@rule("LD302", "fp16-low-headroom", command="model", severity=Severity.WARNING,
      runs_offloaded=False)
def fp16_low_headroom(ctx) -> Outcome:
    """The largest fp32 activations are within a small factor of fp16's limit (65,504).

    ## What it does
    Reads the largest absolute output of every module in the fp32 pass and warns when one is
    within `--fp16-headroom` (default 4x) of 65,504, listing the top modules with their
    headroom. It is computed from fp32 alone, so it also speaks for fp16 training on another
    machine when this device cannot run fp16.

    ## Why is this bad?
    The probe batch is one batch of an untrained adapter. Fine-tuning moves activations, other
    batches hold larger outliers, and longer sequences grow attention outputs: a model that
    peaks at a third of fp16's range today can pass it mid-run, where it shows up as a sudden
    nan loss hours in. Real pretrained models sit here (SmolLM2-135M peaks near 25,000, a
    headroom of about 2.6x). A warning: nothing has overflowed on this batch yet (that is
    LD301's error); it is a risk to watch, not a wasted run.

    ## Example
    ```
    model.layers.11.mlp.down_proj  fp32 peak 25,533  headroom 2.6x  (train in fp16)
    ```

    ## Use instead
    Prefer bf16 for this model; if you must train in fp16, keep the residual stream in fp32
    (autocast) and watch for inf after training has moved the weights.
    """
    m = numerics(ctx)
    if "fp16" not in m.requested:
        raise SkipCheck(f"fp16 not checked (--dtypes {','.join(m.requested)})")
    if not reference_pass(m).finite:
        raise SkipCheck("the fp32 reference pass is itself not finite (LD300)")
    opts = options(ctx)
    if overflow_at(m) is not None:
        return Outcome(summary="fp16 overflows on this batch: reported by LD301")
    peak = m.fp32_peak
    if peak is None:
        return Outcome(summary="no finite module output measured")
    room = headroom(peak.peak)
    near = near_limit(m, opts.fp16_headroom)
    if not near:
        return Outcome(summary=f"largest fp32 output {fmt(peak.peak)} at {peak.name}: headroom "
                               f"{times(room)} to {fmt(FP16_MAX)} (>= {opts.fp16_headroom:g}x)")
    top = near[: opts.top_modules]
    first = min(near, key=lambda s: s.order)
    limit = FP16_MAX / opts.fp16_headroom
    passes = "; fp16 would overflow here" if peak.peak >= FP16_MAX else ""
    message = (f"largest fp32 output {fmt(peak.peak)} at {peak.name} is {times(room)} below fp16's "
               f"{fmt(FP16_MAX)} (margin {opts.fp16_headroom:g}x){passes}; {len(near)} module "
               f"outputs exceed {fmt(limit)}, the first in execution order {first.name}")
    table = Table(f"fp32 peaks within {opts.fp16_headroom:g}x of {fmt(FP16_MAX)}",
                  ["module", "fp32 peak", "headroom"],
                  [[s.name, fmt(s.peak), times(headroom(s.peak))] for s in top])
    finding = fp16_low_headroom.finding(
        message, location=peak.name,
        evidence={"fp32_peak": peak.peak, "module": peak.name, "headroom": room,
                  "factor": opts.fp16_headroom, "first_module_over": first.name,
                  "top": [{"module": s.name, "fp32_peak": s.peak} for s in top]},
        fix="prefer bf16 for this model; in fp16 keep the residual stream in fp32 (autocast) "
            "and re-check after training (--fp16-headroom sets the margin)")
    return Outcome([finding], summary=f"headroom {times(room)} at {peak.name}", views=[table])


# --- LD303 -----------------------------------------------------------------------------------


@rule("LD303", "bf16-divergence", command="model", severity=Severity.WARNING,
      runs_offloaded=False)
def bf16_divergence(ctx) -> Outcome:
    """bf16 computes a different loss, logits or gradient direction than fp32 on the same batch.

    ## What it does
    Compares the bf16 pass with the fp32 pass on the same batch: the loss (relative
    difference), the logits (largest absolute difference, relative to the largest fp32 logit,
    and how often the top-1 token agrees) and the trainable parameters' gradient (cosine to
    fp32's). It warns past a tolerance (loss 5%, gradient cosine 0.9, logits 25%) and is an
    error when bf16 produces inf/nan where fp32 does not.

    ## Why is this bad?
    bf16 keeps fp32's range but only 8 bits of mantissa (about 2-3 significant digits). Most
    models do not care; models with very large attention scores or logits do: a score of 500 is
    off by 1-2 in bf16, which reorders a softmax. The run then optimises a different function
    than the one you evaluate in fp32, and the gradient points elsewhere. A warning: bf16 still
    trains, only less exactly, and the tolerances are judgement calls; inf/nan where fp32 is
    finite is an error, because that run is wasted.

    ## Example
    ```
    bf16: gradient cosine 0.70 (< 0.9); logits differ by up to 3.1 (72% of the largest fp32 logit)
    ```

    ## Use instead
    Train in fp32, or keep the precision-critical parts in fp32 (attention softmax and norms
    under autocast, QK-layernorm or logit soft-capping against attention-logit growth).
    """
    m = numerics(ctx)
    p = measured_pass(m, "bf16", ctx)
    opts = options(ctx)
    agree = f"{p.top1_agreement:.1%}" if p.top1_agreement is not None else "-"
    evidence = {"loss_fp32": m.fp32.loss, "loss_bf16": p.loss, "loss_rel_diff": p.loss_rel_diff,
                "logits_max_abs_diff": p.logits_max_abs_diff,
                "logits_rel_diff": p.logits_rel_diff, "top1_agreement": p.top1_agreement,
                "grad_cosine": p.grad_cosine,
                "tolerances": {"loss_rtol": opts.loss_rtol, "grad_cos_min": opts.grad_cos_min,
                               "logits_rtol": opts.logits_rtol}}
    bad = p.first_bad_forward or p.first_bad_backward
    if bad is not None or not p.finite:
        ref = m.fp32.by_name.get(bad.name) if bad else None
        if bad is None or (ref is not None and ref.finite and ref.grad_finite is not False):
            where = bad.name if bad else "the loss"
            finding = bf16_divergence.finding(
                f"bf16 produces inf/nan at {where} where fp32 is finite (bf16 loss {p.loss})",
                location=bad.name if bad else None, severity=Severity.ERROR, evidence=evidence,
                fix="train in fp32; look for values past 3e38 or 0/0 in a custom op")
            return Outcome([finding], summary=f"inf/nan at {where}")
    reasons = divergence(p, opts)
    if not reasons:
        cos = f", gradient cosine {p.grad_cosine:.4f}" if p.grad_cosine is not None else ""
        return Outcome(summary=f"bf16 loss within {pct(p.loss_rel_diff)} of fp32{cos}, top-1 "
                               f"token agrees at {agree} of positions")
    fp16 = m.get("fp16")
    better = ""
    if fp16 is not None and fp16.ran and fp16.finite and not divergence(fp16, opts):
        better = "; fp16 stays within tolerance on this batch"
    finding = bf16_divergence.finding(
        f"bf16 departs from fp32 on the same batch: {'; '.join(reasons)}; loss "
        f"{p.loss:.4f} vs {m.fp32.loss:.4f}, top-1 token agrees at {agree} of positions{better}",
        evidence=evidence,
        fix="train in fp32 (or fp32 weights with only matmuls under bf16 autocast); for large "
            "attention scores use QK-layernorm or logit soft-capping")
    return Outcome([finding], summary="; ".join(reasons))


# --- LD304 -----------------------------------------------------------------------------------


@rule("LD304", "fp16-gradient-out-of-range", command="model", severity=Severity.WARNING,
      runs_offloaded=False)
def fp16_gradient_out_of_range(ctx) -> Outcome:
    """fp16 gradients overflow to inf, or underflow to zero without loss scaling.

    ## What it does
    Compares the trainable parameters' gradients of the fp16 pass, which uses no loss
    scaling, with fp32's: the share of values that are non-zero in fp32 but exactly zero in
    fp16 (lost), and the first module whose output gradient is inf/nan while the forward was
    finite. From the fp32 gradients it also estimates what a GradScaler at its default scale
    (2^16) would keep. Lost gradients warn (above 1%); an overflowing backward is an error.
    When base parameters train too (LD210: the base is not frozen), the adapters' gradients
    and the base's are counted apart: losses only in the base are an info that points to
    LD210, since those gradients exist only because the base trains.

    ## Why is this bad?
    fp16's smallest value is 2^-24 (6e-8). The loss is a mean over every token, so per-value
    gradients are small, and LoRA gradients (proportional to the adapter's tiny start) smaller
    still: without a loss scale they round to exactly zero and those weights never move. In
    the other direction, gradients past 65,504 are inf and the step is garbage. This is why
    fp16 training needs `torch.amp.GradScaler` (the Trainer adds one with `fp16=True`); a
    hand-written loop often forgets it, or computes the loss in fp16 on top. Lost gradient
    values are a warning: the pass models no scaler, and a Trainer with `fp16=True` adds one,
    so the run may be fine; a backward that overflows to inf/nan is an error.

    ## Example
    ```python
    model.half()
    loss = model(**batch).loss
    loss.backward()          # 22% of the LoRA gradient values are exactly 0
    optimizer.step()
    ```

    ## Use instead
    ```python
    scaler = torch.amp.GradScaler("cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        loss = model(**batch).loss
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    ```
    or train in bf16, which has fp32's range and needs no scaler.
    """

    m = numerics(ctx)
    p16 = measured_pass(m, "fp16", ctx)
    opts = options(ctx)
    if overflow_at(m) is not None or p16.first_bad_forward is not None:
        return Outcome(summary="the fp16 forward already overflows (LD301): gradients not judged")
    if not p16.backward:
        raise SkipCheck("nothing in the model is trainable: no gradients to measure")
    hit = backward_overflow_at(m)
    if hit is not None:
        bad, ref = hit
        ref_peak = ref.grad_peak if ref is not None else None
        finding = fp16_gradient_out_of_range.finding(
            f"the fp16 backward produces {nonfinite_word(bad.grad_peak)} in the gradient of "
            f"{bad.name} (fp32 gradient peak {fmt(ref_peak) if ref_peak is not None else '-'}) "
            f"although the forward is finite",
            location=bad.name, severity=Severity.ERROR,
            evidence={"module": bad.name, "fp32_grad_peak": ref_peak, "fp16_loss": p16.loss},
            fix="train in bf16, or in fp16 with torch.amp.GradScaler (it lowers the scale and "
                "skips steps whose gradients overflow)")
        return Outcome([finding], summary=f"inf gradient at {bad.name}")

    est = scaler_estimate(m, opts)  # what a GradScaler would keep of the fp32 gradients
    grad_peak = m.fp32_grad_peak
    frac = p16.grad_lost_fraction
    # Ties (often every value of a layer lost) go to the parameter first in the model: the
    # order gradients arrive in differs between devices (measured: a GPU named k_proj where
    # the CPU named q_proj, both 100% lost).
    order = {name: i for i, (name, _) in enumerate(ctx.adapted.named_parameters())}
    worst = sorted(p16.grad_lost_by_param.items(),
                   key=lambda kv: (-kv[1], order.get(kv[0], len(order))))[: opts.top_modules]
    evidence = {"lost": p16.grad_lost, "nonzero_fp32": p16.grad_nonzero_fp32,
                "loss_fp32": m.fp32.loss, "loss_computed_in_fp16": p16.loss_in_dtype,
                "lost_fraction": frac, "nonfinite": p16.grad_nonfinite,
                "fp32_values_below_fp16_range": est.below,
                "scaler_scale": est.scale, "lost_with_scaler_estimate": est.below_scaled,
                "sample_stride": m.sample_stride,
                "fp32_max_output_gradient": grad_peak.grad_peak if grad_peak else None,
                "worst": [{"param": n, "lost_fraction": f} for n, f in worst]}
    if frac < opts.grad_lost_warn:
        return Outcome(summary=f"fp16 keeps {pct(1 - frac)} of the {p16.grad_nonzero_fp32:,} "
                               f"non-zero fp32 gradient values without loss scaling")
    split = lost_by_side(ctx, m, est.scale)
    if split is not None:  # the base trains too: tell its losses from the adapters'
        sides, adapter_names = split
        evidence["by_side"] = sides
        return _lost_with_base_trainable(sides, adapter_names, p16, est.scale, evidence, opts)
    kept = est.below_scaled / est.nonzero if est.nonzero else 0.0
    return _lost_without_scaler(p16.grad_lost, p16.grad_nonzero_fp32, frac, "trainable", worst,
                                est.scale, kept, evidence, summary_what="gradient values")


def _lost_without_scaler(lost: int, nonzero: int, frac: float, what: str, worst: list,
                         scale: float, kept: float, evidence: dict, *, summary_what: str,
                         tail: str = "") -> Outcome:
    """LD304's warning: fp16 without loss scaling zeroes `lost` of `what` gradient values, and
    what a GradScaler at `scale` would still lose (`kept` below fp16's range)."""
    w = f"; worst {worst[0][0]} ({pct(worst[0][1])})" if worst else ""
    finding = fp16_gradient_out_of_range.finding(
        f"without loss scaling, fp16 zeroes {lost:,} of the {nonzero:,} {what} gradient values "
        f"that are non-zero in fp32 ({pct(frac)}){w}; a GradScaler at "
        f"2^{int(math.log2(scale))} would leave about {pct(kept)} below fp16's range "
        f"(estimated from the fp32 gradients){tail}",
        location=worst[0][0] if worst else None, evidence=evidence,
        fix="train fp16 with torch.amp.GradScaler (Trainer: fp16=True), or train in bf16")
    return Outcome([finding], summary=f"{pct(frac)} of {summary_what} lost in fp16 without a "
                                      f"GradScaler")


def _lost_with_base_trainable(sides: dict, adapter_names: set, p16: DtypePass, scale: float,
                              evidence: dict, opts: NumericsOptions) -> Outcome:
    """LD304 when base parameters train as well: the base's losses follow from LD210's cause."""
    ad, base = sides["adapters"], sides["base"]
    ranked = sorted(p16.grad_lost_by_param.items(), key=lambda kv: -kv[1])
    worst_base = [(n, f) for n, f in ranked if n not in adapter_names][:1]
    worst_adapter = [(n, f) for n, f in ranked if n in adapter_names][:1]
    if ad["lost_fraction"] < opts.grad_lost_warn:
        w = f"; worst {worst_base[0][0]} ({pct(worst_base[0][1])})" if worst_base else ""
        finding = fp16_gradient_out_of_range.finding(
            f"without loss scaling, fp16 zeroes {base['lost']:,} of the {base['nonzero']:,} "
            f"gradient values of base parameters that are non-zero in fp32 "
            f"({pct(base['lost_fraction'])}){w}: they get gradients only because the base is not "
            f"frozen (LD210); the adapters keep {pct(1 - ad['lost_fraction'])} of their "
            f"{ad['nonzero']:,}", severity=Severity.INFO,
            location=worst_base[0][0] if worst_base else None, evidence=evidence,
            fix="nothing to do for the adapters; if you do train the base in fp16, use "
                "torch.amp.GradScaler (Trainer: fp16=True) or bf16")
        return Outcome([finding], summary=f"the adapters keep {pct(1 - ad['lost_fraction'])} of "
                                          f"their gradient values in fp16; the unfrozen base "
                                          f"(LD210) loses {pct(base['lost_fraction'])}")
    kept = ad["below_scaled"] / ad["nonzero"] if ad["nonzero"] else 0.0
    return _lost_without_scaler(
        ad["lost"], ad["nonzero"], ad["lost_fraction"], "adapter", worst_adapter, scale, kept,
        evidence, summary_what="adapter gradient values",
        tail=f". The base, trainable because it is not frozen (LD210), loses "
             f"{pct(base['lost_fraction'])} of its {base['nonzero']:,}")


# --- LD305 -----------------------------------------------------------------------------------


@rule("LD305", "fp16-trainable-parameters", command="model", severity=Severity.ERROR,
      runs_offloaded=False)
def fp16_trainable_parameters(ctx) -> Outcome:
    """Trainable parameters are stored in fp16, with no fp32 master copy for the optimizer.

    ## What it does
    Looks at the dtype the trainable parameters have after your LoRA code ran. For the fp16
    ones it takes their gradient on the probe batch (from the fp16 pass) and performs one
    `torch.optim.AdamW` step (lr 1e-4, eps 1e-8, weight decay 0.01) on copies, in fp16 and in
    fp32, and counts the values that become inf/nan and the updates fp16 loses. Adapters kept
    in fp32 on an fp16 base pass: they are their own master weights.

    ## Why is this bad?
    AdamW divides by `sqrt(v) + eps`. In fp16, `eps=1e-8` is exactly 0 and `v = 0.001 * g^2`
    underflows for any gradient below about 0.005, so the first step divides by zero: a zero
    gradient (every LoRA A at an identity start) gives 0/0 = nan, a small one gives inf. The
    adapters are nan after one step. A GradScaler cannot rescue it: it refuses to unscale fp16
    gradients. Mixed precision keeps an fp32 copy of what is trained for exactly this reason.
    An error when the simulated step turns values into nan/inf; a warning when it only loses
    updates (the adapters train, more slowly) or could not be simulated.

    ## Example
    ```python
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float16)
    apply_lora(model, rank=8, alpha=16)  # LoRA(...).to(model.dtype): fp16 adapters
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    ```

    ## Use instead
    ```python
    for name, p in model.named_parameters():
        if p.requires_grad:
            p.data = p.data.float()  # fp32 adapters (PEFT: autocast_adapter_dtype=True)
    ```
    and cast the adapter's input/output to its dtype (as PEFT does), with a GradScaler.
    """
    m = numerics(ctx)
    if not m.trainable:
        raise SkipCheck("nothing in the model is trainable")
    half = [t for t in m.trainable if t.dtype == "fp16"]
    total = sum(t.numel for t in m.trainable)
    if not half:
        kinds = sorted({t.dtype for t in m.trainable})
        return Outcome(summary=f"{len(m.trainable)} trainable tensors ({total:,} values) are "
                               f"{'/'.join(kinds)}: "
                               f"{'their own master weights' if kinds == ['fp32'] else 'not fp16'}")
    opts = options(ctx)
    step = simulated_adamw(ctx, m, half, opts)
    source, n_values, nonfinite, lost = step.source, step.values, step.nonfinite, step.lost
    names = [t.name for t in half]
    half_values = sum(t.numel for t in half)
    if not n_values:  # no gradient measured (the passes could not run): say what we know
        finding = fp16_trainable_parameters.finding(
            f"{len(half)} of {len(m.trainable)} trainable tensors ({half_values:,} values, e.g. "
            f"{names[0]}) are fp16 with no fp32 master copy; the optimizer step could not be "
            f"simulated (no gradient was measured: {m.fp32.error or 'the passes did not run'})",
            location=names[0], severity=Severity.WARNING,
            evidence={"fp16_trainable": names[:50], "n_fp16_trainable": len(half)},
            fix="keep the trainable adapters in fp32 and cast their input/output")
        return Outcome([finding], summary=f"{len(half)} fp16 trainable tensors")
    message = (f"{len(half)} of {len(m.trainable)} trainable tensors ({half_values:,} values, "
               f"e.g. {names[0]}) are fp16 with no fp32 master copy: one torch.optim.AdamW step "
               f"(lr {opts.adamw_lr:g}, eps {opts.adamw_eps:g}, which is 0 in fp16) on their "
               f"{source} gradients turns {nonfinite:,} of {n_values:,} values into nan/inf"
               + (f" and loses {lost:,} updates that fp32 keeps" if lost else ""))
    finding = fp16_trainable_parameters.finding(
        message, location=names[0],
        severity=Severity.ERROR if nonfinite else Severity.WARNING,
        evidence={"fp16_trainable": names[:50], "n_fp16_trainable": len(half),
                  "values": half_values, "simulated_values": n_values,
                  "nonfinite_after_step": nonfinite, "lost_updates": lost,
                  "gradient_source": source, "lr": opts.adamw_lr, "eps": opts.adamw_eps},
        fix="keep the trainable adapters in fp32 (p.data = p.data.float(); PEFT does it with "
            "autocast_adapter_dtype=True) and cast their input/output; the frozen base can "
            "stay fp16")
    return Outcome([finding], summary=f"{len(half)} fp16 trainable tensors: {nonfinite:,} of "
                                      f"{n_values:,} values nan/inf after one AdamW step")


RULES = [numerics_verdict, fp16_overflow, fp16_low_headroom, bf16_divergence,
         fp16_gradient_out_of_range, fp16_trainable_parameters]
