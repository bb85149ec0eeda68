"""LD4xx: adapter initialisation and training signal. Identity start, dead adapters, B not
zero, gradient flow after one real backward, the effective scaling, and (with
`--train-steps N`) a short real training run.

The measurements are shared (`model/identity.py`, `model/gradients.py`,
`model/layer_probe.py`); the training run (`model/training.short_run`) is this family's own and
restores what it trained.
"""

from __future__ import annotations

import math

from ..findings import Curve, Severity
from ..rules import Outcome, SkipCheck, rule
from ..text import capped

# torch and the measurements are imported inside the checks: importing the registry (for
# `loradoctor rules`, check-dataset) must stay light.

FIELD_SCALING = (1 / 32, 32.0)   # alpha / r seen in practice: 1/32 (alpha 1, r 32) .. 32
SCALING_MISMATCH = 0.01          # |measured / declared - 1| above this is a mismatch
MAX_NAMED = 4                    # layers named in one message


def _names(adapters) -> str:
    """`a, b, c, d and 3 more`: the adapters' layer names, capped."""
    return capped((a.name for a in adapters), MAX_NAMED)


def _about(rule, adapters, message: str, *, fix: str | None = None,
           severity: Severity | None = None, evidence: dict | None = None):
    """A finding about these adapters: at the first one, with every name in its evidence."""
    return rule.finding(message, location=adapters[0].name, fix=fix, severity=severity,
                        evidence={"modules": [a.name for a in adapters], **(evidence or {})})


def _is_zero(t) -> bool:
    return not bool(t.detach().abs().max() > 0) if t.numel() else True


@rule("LD401", "not-identity-start", command="model", severity=Severity.ERROR)
def not_identity_start(ctx) -> Outcome:
    """The adapted model's output differs from the base model's before any training.

    ## What it does
    Runs the adapted model, exactly as your code built it, on the probe batch and compares its
    logits with the base model's logits taken before the adapters were attached. The
    tolerance depends on the dtype the layers compute in (float32: 1e-4 relative to the largest
    base logit). When they differ, a second pass with hooks on every adapted layer names the
    layers that already add something. A forward that raises is reported here too.

    ## Why is this bad?
    LoRA starts from the pretrained model: with `B = 0` the update `B @ A` is exactly zero and
    training moves away from the base only as far as the data asks. A start that is not an
    identity has damaged the model before the first step; the first part of training is
    spent repairing it, and small datasets never do. An error: the run starts from a model
    that is not the one you chose, and a forward that raises cannot train at all.

    ## Example
    ```python
    nn.init.normal_(self.B.weight, std=0.02)     # B random: s * B @ A @ x != 0 at step 0
    ```

    ## Use instead
    ```python
    nn.init.kaiming_uniform_(self.A.weight, a=math.sqrt(5))
    nn.init.zeros_(self.B.weight)                # B zero: identity start
    ```
    """
    from ..model.identity import adapted_forward
    from ..model.layer_probe import module_probe
    from ..model.shared import adapters_or_skip, model_dtype
    adapters_or_skip(ctx)
    fw = adapted_forward(ctx)
    if fw.error:
        aliased = [v for v in module_probe(ctx).verdicts if v.aliased]
        cause = ""
        if aliased:
            v = aliased[0]
            target = v.forward_of or next(iter(v.static_forward_of), None) or v.adapter_of
            cause = f": caused by closure aliasing (LD201), e.g. {v.adapter.name} runs the " \
                    f"forward of {target}"
        return Outcome([not_identity_start.finding(
            f"the adapted model's forward raises {fw.error}{cause}",
            evidence={"error": fw.error, "aliased": [v.adapter.name for v in aliased]},
            fix="fix the wiring first (see LD201)" if aliased else
                "run the adapted model once on a batch and fix what it raises")],
            summary="the adapted model cannot run a forward")
    dtype = str(model_dtype(ctx)).replace("torch.", "")
    limit = fw.rtol * max(1.0, fw.base_max_abs)
    ctx.summary["init_max_abs_logit_diff"] = fw.max_abs_diff
    if fw.identity:
        return Outcome(summary=f"logits equal the base logits at init (max |diff| "
                               f"{fw.max_abs_diff:.2g} <= {limit:.1e}, {dtype})")
    top = [(n, d) for n, d in fw.layer_deltas if d > 0][:MAX_NAMED]
    where = ""
    if top:
        where = "; layers that already add something: " + ", ".join(
            f"{n} (max {d:.3g})" for n, d in top)
    msg = (f"the adapted model's logits differ from the base logits by up to "
           f"{fw.max_abs_diff:.4g} on the probe batch before any training (tolerance "
           f"{limit:.1e} for {dtype}){where}")
    if not fw.finite:
        msg = "the adapted model's logits are not finite at init; " + msg
    return Outcome([not_identity_start.finding(
        msg, location=top[0][0] if top else None,
        evidence={"max_abs_diff": fw.max_abs_diff, "tolerance": limit, "dtype": dtype,
                  "base_max_abs": fw.base_max_abs, "layer_deltas": dict(fw.layer_deltas[:50])},
        fix="initialise B to zero (nn.init.zeros_) and A randomly, so B @ A = 0 at step 0")],
        summary=f"max |adapted - base| logits {fw.max_abs_diff:.4g} > {limit:.1e}")


@rule("LD402", "dead-adapter", command="model", severity=Severity.ERROR)
def dead_adapter(ctx) -> Outcome:
    """An adapter's input-side factor A is zero (with B zero too), so it can never train.

    ## What it does
    Reads every adapter's factors. Both zero is an error: B's gradient is proportional to
    `A @ x` and A's to `B.T @ grad`, both zero forever. A zero with B non-zero is an info: an
    identity start that trains A first (PEFT's own init for embedding adapters).

    ## Why is this bad?
    An adapter with `A = B = 0` is a fixed point of gradient descent: the loss does not move,
    the optimizer runs, and the saved adapter is all zeros. It usually comes from a second
    initialisation after the adapters were attached (`model.apply(init_weights)` zeroing every
    Linear, or `reset_parameters` overridden to zero both factors).

    ## Example
    ```python
    nn.init.zeros_(self.A.weight)
    nn.init.zeros_(self.B.weight)      # A = B = 0: no gradient reaches either
    ```

    ## Use instead
    ```python
    nn.init.kaiming_uniform_(self.A.weight, a=math.sqrt(5))
    nn.init.zeros_(self.B.weight)
    ```
    """
    from ..model.shared import adapters_or_skip
    adapters = adapters_or_skip(ctx)
    both = [a for a in adapters if _is_zero(a.A) and _is_zero(a.B)]
    a_only = [a for a in adapters if _is_zero(a.A) and not _is_zero(a.B)]
    findings = []
    if both:
        findings.append(_about(
            dead_adapter, both,
            f"A and B are both zero in {len(both)} of {len(adapters)} adapters ({_names(both)}): "
            f"B's gradient is s * grad @ (A x)^T = 0 and A's is s * B^T @ grad = 0, so these "
            f"adapters never train",
            fix="initialise A randomly (kaiming_uniform_) and only B to zero; do not re-run "
                "an init that zeroes every Linear after attaching the adapters"))
    if a_only:
        findings.append(_about(
            dead_adapter, a_only,
            f"A is zero in {len(a_only)} of {len(adapters)} adapters ({_names(a_only)}) while B is "
            f"not: still an identity start; B gets its gradient once A has moved (the reverse "
            f"of the usual init, and PEFT's init for embeddings)", severity=Severity.INFO))
    a_max = max(float(a.A.detach().abs().max()) for a in adapters)
    summary = (f"A is zero in {len(both) + len(a_only)} of {len(adapters)} adapters" if findings
               else f"A is non-zero in every adapter (max |A| {a_max:.3g})")
    if a_only and not both:
        summary += " (B is not: an identity start that trains A first)"
    return Outcome(findings, summary=summary)


@rule("LD403", "lora-b-not-zero", command="model", severity=Severity.ERROR)
def lora_b_not_zero(ctx) -> Outcome:
    """The output-side factor B is not zero at initialisation.

    ## What it does
    Reads every adapter's B. When B is not zero and the adapted model's logits differ from the
    base logits (LD401), the start is damaged: error. When B is not zero but the start is
    still an identity (A zero, or base weights compensated as PiSSA/OLoRA do), it is an info.

    ## Why is this bad?
    With `B != 0` the adapter adds `s * B @ A @ x` before any training, so the model you
    fine-tune is not the pretrained one. Kaiming-initialising B (as FastVideo once did) or
    initialising both factors with the same helper is the usual cause. An error only when the
    start is measured damaged (LD401 agrees); methods that compensate in the base weights
    (PiSSA, OLoRA) keep an identity start on purpose, hence the info.

    ## Example
    ```python
    self.B = nn.Linear(rank, out_features, bias=False)   # default init: Kaiming uniform
    ```

    ## Use instead
    ```python
    self.B = nn.Linear(rank, out_features, bias=False)
    nn.init.zeros_(self.B.weight)
    ```
    """
    from ..model.identity import adapted_forward
    from ..model.shared import adapters_or_skip
    adapters = adapters_or_skip(ctx)
    nonzero = [a for a in adapters if not _is_zero(a.B)]
    if not nonzero:
        return Outcome(summary=f"B is zero in all {len(adapters)} adapters")
    b_max = max(float(a.B.detach().abs().max()) for a in nonzero)
    fw = adapted_forward(ctx)
    identity = fw.identity if fw.error is None else None
    worst = max(nonzero, key=lambda a: float(a.B.detach().abs().max()))
    evidence = {"modules": [a.name for a in nonzero], "max_abs_B": b_max,
                "start_is_identity": identity}
    if identity:
        return Outcome([lora_b_not_zero.finding(
            f"B is not zero in {len(nonzero)} of {len(adapters)} adapters (max |B| {b_max:.3g}), "
            f"but the start is still an identity (A is zero, or the base weights compensate)",
            location=worst.name, severity=Severity.INFO, evidence=evidence)],
            summary=f"B is non-zero in {len(nonzero)} of {len(adapters)} adapters; the start "
                    f"is still an identity")
    return Outcome([lora_b_not_zero.finding(
        f"B is not zero at init in {len(nonzero)} of {len(adapters)} adapters ({_names(nonzero)}; "
        f"max |B| {b_max:.3g} in {worst.name}): each adds s * B @ A @ x before any training",
        location=worst.name, evidence=evidence,
        fix="initialise B to zero: nn.init.zeros_(B.weight)")],
        summary=f"B is non-zero in {len(nonzero)} of {len(adapters)} adapters")


@rule("LD404", "no-gradient-flow", command="model", severity=Severity.ERROR)
def no_gradient_flow(ctx) -> Outcome:
    """After one real backward, some adapter gets no gradient, or the base gets one.

    ## What it does
    Runs one forward and `loss.backward()` of the adapted model on the probe batch in training
    mode (your `.grad` fields are put back afterwards) and reads which parameters got a
    non-zero gradient. At step one B should get a gradient in every adapter;
    A gets a zero-valued gradient while B is zero and a real one after the first update, so A
    must at least be in the graph. No base parameter should get one. Adapters that an
    optimizer built from `model.parameters()` cannot see (not registered) are flagged too.

    ## Why is this bad?
    An adapter outside the graph (detached, computed under `torch.no_grad()`, frozen with
    `requires_grad=False`, or hidden from the optimizer) never trains while the loop looks
    healthy. Gradient checkpointing with frozen embeddings and no input gradients is the
    classic case: every `lora_B` stays zero for the whole run.

    On a quantized base the backward runs as training runs it. 4-bit layers that bitsandbytes
    already rewrote into its CPU inference layout before the check (an eval forward without
    gradients ran on the model: `generate()`, an evaluation under `torch.no_grad()`) are an
    error of their own: that layout's matmul has no backward, so the adapters before those
    layers get no gradient and the others wrong ones.

    Severities: an error where an adapter cannot train at all (B gets no gradient, B frozen,
    not registered). Only A frozen or outside the graph is a warning: B still trains against
    a fixed random projection (LoRA-FA freezes A on purpose), so the run is weaker, not
    wasted. Base parameters that get a gradient are counted in the summary only: they follow
    from a base left trainable, which LD210 reports once.

    ## Example
    ```python
    for p in model.parameters(): p.requires_grad = False    # after attaching the adapters
    ```

    ## Use instead
    ```python
    for p in model.parameters(): p.requires_grad = False    # before attaching them
    model.enable_input_require_grads()                      # with gradient checkpointing
    ```
    """
    from ..model.gradients import gradients
    from ..model.shared import adapters_or_skip
    adapters = adapters_or_skip(ctx)
    gr = gradients(ctx)
    if gr.error:
        raise SkipCheck(f"the adapted model's forward raises {gr.error} (see LD201/LD401)")
    findings = []
    # Never trains: both factors frozen, or B frozen at zero (then A's gradient, s * B^T @ grad,
    # is zero too). One factor frozen while the other trains is a weaker adapter, not a dead one.
    frozen = [a for a in adapters if not a.B.requires_grad
              and (not a.A.requires_grad or _is_zero(a.B))]
    half = [a for a in adapters if a not in frozen
            and not (a.A.requires_grad and a.B.requires_grad)]
    if frozen:
        findings.append(_about(
            no_gradient_flow, frozen,
            f"{len(frozen)} of {len(adapters)} adapters have factors with requires_grad=False "
            f"({_names(frozen)}): they never train",
            fix="freeze the base before attaching the adapters, not after"))
    if half:
        which = "A" if not half[0].A.requires_grad else "B"
        other = "B" if which == "A" else "A"
        findings.append(_about(
            no_gradient_flow, half,
            f"{which} has requires_grad=False in {len(half)} of {len(adapters)} adapters "
            f"({_names(half)}) while {other} trains: only {other} learns, against a fixed "
            f"{which}" + (" (as LoRA-FA does on purpose)" if which == "A" else ""),
            severity=Severity.WARNING, evidence={"frozen_factor": which},
            fix=f"set requires_grad = True on {which} too, unless a frozen {which} is what you "
                f"mean"))
    live = [a for a in adapters if a not in frozen]
    findings += _packed_for_cpu(ctx)
    findings += _outside_the_graph(adapters, live, gr)
    # Base parameters get a gradient only when they require one: that is the unfrozen base,
    # reported once by LD210; here it is only counted.
    b_ok = [a for a in live if gr.grad_max.get(id(a.B))]
    a_ok = [a for a in live if gr.grad_max.get(id(a.A))]
    b_grad = max((gr.grad_max[id(a.B)] for a in b_ok), default=0.0)
    summary = f"B got a gradient in {len(b_ok)} of {len(adapters)} adapters (max {b_grad:.2g})"
    summary += f"; A in {len(a_ok)}" if a_ok else "; A gets its gradient after the first update"
    summary += (f"; {len(gr.base_with_grad)} base tensors got one (the base is not frozen: "
                f"LD210)" if gr.base_with_grad else "; no base parameter got one")
    if gr.loss is not None and not math.isfinite(gr.loss):
        summary += f" (loss {gr.loss})"
    return Outcome(findings, summary=summary)


def _packed_for_cpu(ctx) -> list:
    """LD404 on 4-bit layers already in bitsandbytes' CPU inference layout (no backward)."""
    from ..model.quantized import packed_layers, quantized_layers
    packed = packed_layers(ctx.adapted)
    if not packed:
        return []
    return [no_gradient_flow.finding(
        f"{len(packed)} of {len(quantized_layers(ctx.adapted))} 4-bit layers are already in "
        f"bitsandbytes' CPU inference layout ({capped(packed)}): an eval forward without "
        f"gradients ran on this model before (generate(), an evaluation under no_grad); that "
        f"layout's matmul has no backward, so gradients stop at these layers and the ones that "
        f"arrive are wrong", location=packed[0], evidence={"modules": packed},
        fix="load the model again and train before any eval forward on CPU (or run those "
            "forwards with the 4-bit layers in train mode); state_dict() undoes the layout "
            "only in part")]


def _outside_the_graph(adapters, live, gr) -> list:
    """LD404 on the adapters that can train (`live`) but that the backward does not reach, and
    on adapters an optimizer built from `model.parameters()` cannot see."""
    b_none = [a for a in live if a.B.requires_grad and gr.grad_max.get(id(a.B)) is None]
    b_zero = [a for a in live if a.B.requires_grad and a not in b_none
              and not gr.grad_max.get(id(a.B))
              and not _is_zero(a.A)]
    a_none = [a for a in live if gr.grad_max.get(id(a.A)) is None and a not in b_none
              and a.A.requires_grad]
    unregistered = [a for a in adapters if not a.registered]
    n = len(adapters)
    cases = [
        (b_none, f"no gradient reaches {len(b_none)} of {n} adapters ({_names(b_none)}): they "
                 f"are outside the computation graph (detached, under torch.no_grad, never "
                 f"called, or behind reentrant gradient checkpointing without input gradients)",
         None, "compute the adapter inside the graph (no .detach() or torch.no_grad() in "
               "forward); with gradient checkpointing call model.enable_input_require_grads()"),
        (b_zero, f"B's gradient is exactly zero in {len(b_zero)} of {n} adapters "
                 f"({_names(b_zero)}) although A is not zero",
         None, "check that the adapter's output reaches the loss (gradient checkpointing "
               "needs model.enable_input_require_grads())"),
        (a_none, f"A is outside the graph in {len(a_none)} of {n} adapters ({_names(a_none)}): "
                 f"it will never get a gradient, even after B moves, so only B learns",
         Severity.WARNING, "do not detach A's output inside the adapter"),
        (unregistered, f"{len(unregistered)} adapters are not registered in the model "
                       f"({_names(unregistered)}): an optimizer built from model.parameters() "
                       f"never updates them",
         None, "assign the adapter as a module attribute (module.lora = lora) or keep them in "
               "an nn.ModuleList, not a Python list or a closure"),
    ]
    return [_about(no_gradient_flow, group, message, severity=severity, fix=fix)
            for group, message, severity, fix in cases if group]


@rule("LD405", "unusual-lora-scaling", command="model", severity=Severity.WARNING,
      needs_values=False)
def unusual_lora_scaling(ctx) -> Outcome:
    """The adapter scaling (alpha / r) is zero, negative, far from usual, or not what is applied.

    ## What it does
    Reads each adapter's declared scaling (`scaling`, or `alpha / r`) and rank, and measures the
    scaling its layer really applies (the output of the layer with random factors, fitted to
    `F.linear + s * B @ A @ x`). Flags a zero scaling (error: the adapter adds nothing), a
    negative one, one outside 1/32..32, and a declared scaling that differs from the applied
    one (applied twice, or `r / alpha` instead of `alpha / r`).

    ## Why is this bad?
    `alpha // r` with integer division is 0 when alpha < r: the adapter adds nothing and
    gets no gradient. A scaling far outside the usual range makes the learning rate you tuned
    meaningless (a 64x scaling is a 64x learning rate on the update). A merge tool reads the
    declared scaling; if the forward applies another one, the merged model is not the one you
    trained.

    Severities: a zero scaling is an error (nothing trains). The rest are warnings: a negative
    or unusual scaling still trains (the optimizer adapts, at another effective learning
    rate), and a declared scaling that differs from the applied one matters at merge time,
    where LD502 measures the merge itself and is the error.

    ## Example
    ```python
    self.scaling = alpha // rank          # 8 // 16 == 0
    ```

    ## Use instead
    ```python
    self.scaling = alpha / rank           # 0.5
    ```
    """
    from ..model.layer_probe import module_probe
    from ..model.shared import adapters_or_skip
    adapters = adapters_or_skip(ctx)
    measured = {id(v.adapter): v.measured_scaling for v in module_probe(ctx).verdicts
                if v.status == "ok" and v.measured_scaling is not None}
    findings = []
    rows = []
    zero, negative, far, mismatch = [], [], [], []
    for a in adapters:
        decl = a.declared_scaling
        meas = measured.get(id(a))
        eff = meas if meas is not None else decl
        rows.append({"module": a.name, "rank": a.rank, "declared": decl, "measured": meas,
                     "source": a.scaling_source})
        if decl == 0 or (eff is not None and eff == 0):
            zero.append(a)
        elif eff is not None and eff < 0:
            negative.append(a)
        elif eff is not None and not FIELD_SCALING[0] <= eff <= FIELD_SCALING[1]:
            far.append((a, eff))
        if decl and meas is not None and abs(meas / decl - 1) > SCALING_MISMATCH:
            mismatch.append((a, decl, meas))
    if zero:
        findings.append(_about(
            unusual_lora_scaling, zero,
            f"the scaling is 0 in {len(zero)} of {len(adapters)} adapters ({_names(zero)}; "
            f"{zero[0].scaling_source or 'measured'}): the adapters add nothing and get no "
            f"gradient", severity=Severity.ERROR,
            fix="compute scaling = alpha / rank with true division"))
    if negative:
        findings.append(_about(
            unusual_lora_scaling, negative,
            f"the scaling is negative in {len(negative)} adapters ({_names(negative)})",
            fix="use a positive alpha"))
    if far:
        a, eff = far[0]
        findings.append(unusual_lora_scaling.finding(
            f"the scaling alpha / r is {eff:.4g} in {len(far)} adapters "
            f"({_names(x for x, _ in far)}; r={a.rank}), far outside what the field uses ({FIELD_SCALING[0]:.3g} to "
            f"{FIELD_SCALING[1]:g}; alpha = r or 2r gives 1 or 2)", location=a.name,
            evidence={"modules": {x.name: s for x, s in far}},
            fix="set alpha to r or 2r (or use rsLoRA's alpha / sqrt(r) on purpose)"))
    if mismatch:
        a, decl, meas = mismatch[0]
        findings.append(unusual_lora_scaling.finding(
            f"{a.name} declares scaling {decl:.4g} ({a.scaling_source}) but its forward applies "
            f"{meas:.4g} ({meas / decl:.2f}x) in {len(mismatch)} adapters: a merge that reads the "
            f"declared scaling will not reproduce the trained model", location=a.name,
            evidence={"modules": {x.name: {"declared": d, "measured": m} for x, d, m in mismatch}},
            fix="apply the scaling exactly once, in the adapter's forward"))
    values = sorted({round(r["measured"] if r["measured"] is not None else (r["declared"] or 0), 6)
                     for r in rows})
    ranks = sorted({a.rank for a in adapters})
    summary = (f"scaling {', '.join(f'{v:g}' for v in values[:4])} with r "
               f"{', '.join(map(str, ranks[:4]))} across {len(adapters)} adapters")
    ctx.summary.update({"lora_ranks": ranks, "lora_scalings": values[:8]})
    return Outcome(findings, summary=summary)


@rule("LD406", "no-training-signal", command="model", severity=Severity.ERROR)
def no_training_signal(ctx) -> Outcome:
    """A few real optimizer steps do not train the adapters (`check-model --train-steps N`).

    ## What it does
    Runs N real AdamW steps (lr 1e-3) over the trainable parameters of your adapted model on
    the probe batch (from `--data` when given), the plain loop people write, then restores
    every value it trained. Reports whether the loss stayed finite and fell, how many adapters
    changed, and whether the base stayed unchanged. Skipped without `--train-steps`.

    ## Why is this bad?
    The static checks say what should happen; this shows it does. A loss that does not move,
    adapters that stay at their initial values, or base weights that drift mean the run you
    are about to start will waste its budget. Those are errors; a loss that rises over a few
    steps on one batch is a warning (the learning rate may simply be high for one batch).
    Trainable base weights that change follow from a base left trainable, which LD210 reports
    once (they are counted in the summary); frozen ones that change are an error.

    ## Example
    ```
    loradoctor check-model --model DIR --apply lora.py:apply_lora --train-steps 5
    # loss 6.2383 -> 6.2383 over 5 steps; 0 of 14 adapters changed
    ```

    ## Use instead
    Fix what the other LD2xx/LD4xx findings point at, then run again: the loss falls and every
    adapter changes.
    """
    from ..model.layer_probe import module_probe
    from ..model.shared import adapters_or_skip
    from ..model.training import TRAIN_LR, short_run
    steps = ctx.train_steps
    if not steps or steps <= 0:
        raise SkipCheck("pass --train-steps N to run N real optimizer steps")
    adapters = adapters_or_skip(ctx)
    trained = short_run(ctx, adapters, steps)
    run, curve = trained.run, trained.curve
    findings = []
    if run.error:
        aliased = [v for v in module_probe(ctx).verdicts if v.aliased]
        why = f" (closure aliasing, see LD201: {aliased[0].adapter.name})" if aliased else ""
        findings.append(no_training_signal.finding(
            f"training crashed at {run.error}{why}", evidence={"error": run.error,
                                                               "losses": run.losses},
            fix="fix the wiring findings (LD2xx) first"))
        return Outcome(findings, summary=f"training crashed at {run.error}",
                       views=_loss_curve(steps, curve))
    findings += _loss_findings(trained, steps)
    unchanged = [a for a in adapters if a not in trained.changed]
    if unchanged:
        findings.append(_about(
            no_training_signal, unchanged,
            f"{len(unchanged)} of {len(adapters)} adapters did not change in {steps} AdamW "
            f"steps ({_names(unchanged)})",
            fix="see LD402/LD404: these adapters get no gradient or are not in the optimizer"))
    frozen_changed = trained.frozen_changed
    if frozen_changed:  # trainable base tensors that move are LD210's unfrozen base
        findings.append(no_training_signal.finding(
            f"{len(frozen_changed)} frozen base tensors changed during training (e.g. "
            f"{frozen_changed[0]}): something writes to them outside the optimizer",
            location=frozen_changed[0], evidence={"tensors": frozen_changed[:50]},
            fix="keep in-place writes to base weights out of the forward and the loop"))
    base_changed = trained.base_changed
    summary = (f"{steps} AdamW steps (lr {TRAIN_LR:g}): loss {curve[0]:.4f} -> "
               f"{curve[-1]:.4f}; {len(trained.changed)} of {len(adapters)} adapters changed"
               + (" (A after the first update)" if steps == 1 and not trained.changed_a else "")
               + ("; base unchanged" if not base_changed else
                  f"; {len(base_changed)} base tensors changed"
                  + ("" if frozen_changed else " (the base is not frozen: LD210)")))
    ctx.summary["train_losses"] = curve
    return Outcome(findings, summary=summary, views=_loss_curve(steps, curve))


def _loss_findings(trained, steps: int) -> list:
    """LD406 on the loss curve: a loss that turns non-finite, does not move, or rises."""
    from ..model.training import TRAIN_LR
    curve, final = trained.curve, trained.final
    if not all(math.isfinite(x) for x in curve):
        bad = next(i for i, x in enumerate(curve) if not math.isfinite(x))
        return [no_training_signal.finding(
            f"the loss is {curve[bad]} at step {bad} of {steps}", evidence={"losses": curve},
            fix="see the numerics (LD3xx) and masking (LD1xx) findings")]
    if final is None:
        return []
    first = curve[0]
    if final == first:
        return [no_training_signal.finding(
            f"the loss does not move: {first:.4f} before and after {steps} AdamW steps",
            evidence={"losses": curve}, fix="see LD402/LD404: no gradient reaches the adapters")]
    if final > first:
        return [no_training_signal.finding(
            f"the loss rose from {first:.4f} to {final:.4f} over {steps} AdamW steps (lr "
            f"{TRAIN_LR:g}) on one batch", severity=Severity.WARNING,
            evidence={"losses": curve}, fix="check the scaling (LD405) and the learning rate")]
    return []


def _loss_curve(steps: int, curve: list[float]) -> list:
    return [Curve(f"loss over {steps} real AdamW steps, then after the last",
                  {"adapted model": curve})] if curve else []


RULES = [not_identity_start, dead_adapter, lora_b_not_zero, no_gradient_flow,
         unusual_lora_scaling, no_training_signal]
