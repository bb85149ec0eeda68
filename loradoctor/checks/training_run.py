"""LD420-LD426: what goes wrong while training runs, read step by step by the watchdog.

Each rule reads the `model.run_state.WatchState` of the current step (the loss, the trainable
gradients' norm, a short loss history, the adapters' B factors at one step) and returns a
finding naming the step and the values, or nothing. `Watchdog` (plain loops) and
`LoraDoctorCallback` (Trainer, TRL) run them after every optimizer step; each fires once.
Severity: all are errors (the run is wasted from that step on) except where noted.
"""

from __future__ import annotations

import math

from ..findings import Severity
from ..rules import Outcome, SkipCheck, rule
from ..text import capped


def _fmt(x: float | None) -> str:
    return "none" if x is None else f"{x:.6g}"


@rule("LD420", "non-finite-loss", command="watch", severity=Severity.ERROR)
def non_finite_loss(state) -> Outcome:
    """The training loss is NaN or infinite at some step.

    ## What it does
    Reads the loss of every optimizer step (the model's own loss, captured from its forward
    output by the callback, or the value you pass to `watch.step(loss)`) and reports the first
    step where it is NaN or infinite.

    ## Why is this bad?
    From that step on every weight the optimizer touches becomes NaN. `transformers.Trainer`
    hides it: with `logging_nan_inf_filter=True` (the default) a NaN step is replaced by the
    average of the previous ones in the logged loss, so the logs look normal while the model is
    destroyed. Usual causes: samples with no supervised token (0/0), fp16 overflow, a learning
    rate far too high.

    ## Example
    ```python
    loss = model(**batch).loss   # nan: every label in the batch is -100
    ```

    ## Use instead
    ```python
    loradoctor.gate(model=model, tokenizer=tokenizer, dataset=train_ds)  # before the loop
    ```
    """
    if state.loss is None or math.isfinite(state.loss):
        return Outcome()
    return Outcome([non_finite_loss.finding(
        f"the model's loss is {state.loss} (a batch that supervises no token, or an "
        f"overflow); a Trainer logs such a step as a finite number (0, or the average its "
        f"logging_nan_inf_filter puts in its place), and an optimizer step on NaN gradients "
        f"writes NaN into the weights",
        location=f"step {state.step}", evidence={"step": state.step, "loss": state.loss},
        fix="check the batch at this step for samples with no supervised token (LD101) and "
            "fp16 overflow (LD301); lower the learning rate")])


@rule("LD421", "non-finite-gradient-norm", command="watch", severity=Severity.ERROR)
def non_finite_gradient_norm(state) -> Outcome:
    """The norm of the trainable parameters' gradients is NaN or infinite.

    ## What it does
    Measures the norm of every trainable parameter's gradient at each optimizer step (one
    fused norm) and reports the first step where it is not finite.

    ## Why is this bad?
    Gradient clipping by norm turns an infinite norm into NaN updates; without a loss scaler
    that skips the step, the weights become NaN. In fp16 this is the classic overflow in the
    backward pass.

    ## Example
    ```python
    model.half(); loss.backward()   # an fp16 activation gradient overflows to inf
    ```

    ## Use instead
    ```python
    # train in bf16 (or fp32 adapters with autocast and a GradScaler)
    ```
    """
    g = state.grad_norm
    if g is None or math.isfinite(g) or (state.loss is not None and not math.isfinite(state.loss)):
        return Outcome()  # gradients of a non-finite loss are LD420's: one cause, one finding
    return Outcome([non_finite_gradient_norm.finding(
        f"the gradient norm of the trainable parameters is {g} (loss "
        f"{_fmt(state.loss)})", location=f"step {state.step}",
        evidence={"step": state.step, "grad_norm": g, "loss": state.loss},
        fix="train in bf16 or keep the adapters in fp32 with a GradScaler (see LD301, LD304)")])


@rule("LD422", "zero-gradient-norm", command="watch", severity=Severity.ERROR)
def zero_gradient_norm(state) -> Outcome:
    """The trainable parameters' gradients are all exactly zero at a step.

    ## What it does
    Reports a step at which gradients exist for the trainable parameters and their norm is
    exactly 0.

    ## Why is this bad?
    Nothing learns from that batch. Every step like it means the loss does not reach the
    adapters: labels all -100 in a framework that then returns 0, adapters not wired into the
    forward (LD204), or a detached computation.

    ## Example
    ```python
    out = base_forward(x).detach() + lora(x) * 0   # no gradient reaches A or B
    ```

    ## Use instead
    ```python
    out = base_forward(x) + lora_B(lora_A(x)) * scaling
    ```
    """
    if state.grad_norm != 0.0 or (state.loss is not None and not math.isfinite(state.loss)):
        return Outcome()  # a non-finite loss is LD420's: one cause, one finding
    return Outcome([zero_gradient_norm.finding(
        f"the trainable parameters' gradients are all exactly 0 (loss "
        f"{_fmt(state.loss)}), so this step trains nothing", location=f"step {state.step}",
        evidence={"step": state.step, "grad_norm": 0.0, "loss": state.loss},
        fix="check that the adapters are in the forward (LD204, LD404) and that the batch "
            "supervises tokens (LD101)")])


@rule("LD423", "loss-frozen", command="watch", severity=Severity.ERROR)
def loss_frozen(state) -> Outcome:
    """The loss stays at exactly the same value for several steps.

    ## What it does
    Reports when the last `frozen_steps` losses (5 by default) are equal within a relative
    1e-7.

    ## Why is this bad?
    Different batches give different losses even for a model that learns nothing, unless the
    output no longer depends on the input or nothing is updated: a learning rate of 0, an
    optimizer built before the adapters existed (it holds none of them), outputs saturated to a
    constant.

    ## Example
    ```python
    optimizer = AdamW(model.parameters())   # built before apply_lora: holds no adapter
    apply_lora(model)
    ```

    ## Use instead
    ```python
    apply_lora(model)
    optimizer = AdamW(p for p in model.parameters() if p.requires_grad)
    ```
    """
    n = state.options.frozen_steps
    recent = list(state.losses)[-n:]
    if len(recent) < n or not all(math.isfinite(x) for x in recent):
        return Outcome()
    ref = recent[-1]
    if max(abs(x - ref) for x in recent) > state.options.frozen_rtol * max(1.0, abs(ref)):
        return Outcome()
    return Outcome([loss_frozen.finding(
        f"the loss has been {ref:.6g} for {n} steps in a row: nothing is "
        f"being updated, or the output no longer depends on the input",
        location=f"step {state.step}", evidence={"step": state.step, "losses": recent},
        fix="check that the optimizer holds the adapters and the learning rate is not 0")])


@rule("LD424", "adapters-still-zero", command="watch", severity=Severity.ERROR)
def adapters_still_zero(state) -> Outcome:
    """Adapters whose B factor is still all zero after several optimizer steps.

    ## What it does
    At step `zero_b_after` (5 by default) reads every adapter's B factor (they start at zero
    by design) and reports those that are still exactly zero.

    ## Why is this bad?
    B starts at zero so that training starts from the pretrained model; the first optimizer
    step moves it. A B that is still zero after several steps never receives a gradient or is
    not in the optimizer: that adapter trains nothing, and the run is the base model.

    ## Example
    ```python
    for p in model.parameters(): p.requires_grad = False   # after apply_lora: adapters too
    ```

    ## Use instead
    ```python
    for n, p in model.named_parameters(): p.requires_grad = "lora_" in n
    ```
    """
    if state.zero_b is None:
        raise SkipCheck(f"B factors are read at step {state.options.zero_b_after}")
    if not state.zero_b:
        return Outcome()
    names = state.zero_b
    listed = capped(names)
    return Outcome([adapters_still_zero.finding(
        f"step {state.step}: {len(names)} of {state.n_adapters} adapters still have B all "
        f"zero after {state.options.zero_b_after} steps: {listed}", location=names[0],
        evidence={"step": state.step, "adapters": names[:1000], "total": state.n_adapters},
        fix="make the adapters trainable (requires_grad=True) and build the optimizer after "
            "applying LoRA")])


@rule("LD425", "loss-collapsed-to-uniform", command="watch", severity=Severity.ERROR)
def loss_collapsed_to_uniform(state) -> Outcome:
    """The loss rose to log(vocab_size): the model now predicts the uniform distribution.

    ## What it does
    Reports when, after the loss was once below 90% of `log(vocab_size)`, the last
    `uniform_steps` losses (3 by default) sit within 2% of `log(vocab_size)`.

    ## Why is this bad?
    A cross-entropy of `log(V)` is what a model that knows nothing scores: every token equally
    likely. A fine-tuned model that reaches it has collapsed (an exploding update, weights
    overwritten, a broken merge), and it will not recover.

    ## Example
    ```python
    optimizer = AdamW(params, lr=1.0)   # the first updates destroy the pretrained weights
    ```

    ## Use instead
    ```python
    optimizer = AdamW(params, lr=2e-4)
    ```
    """
    v = state.vocab_size
    n = state.options.uniform_steps
    recent = list(state.losses)[-n:]
    if not v or len(recent) < n:
        return Outcome()
    uniform = math.log(v)
    if state.best_loss >= state.options.learned_below * uniform:
        return Outcome()
    if not all(math.isfinite(x) and abs(x - uniform) <= state.options.uniform_rtol * uniform
               for x in recent):
        return Outcome()
    return Outcome([loss_collapsed_to_uniform.finding(
        f"the loss is {recent[-1]:.4f}, log(vocab_size={v}) = {uniform:.4f}, "
        f"for {n} steps, after it was {state.best_loss:.4f}: the model collapsed to the uniform "
        f"distribution", location=f"step {state.step}",
        evidence={"step": state.step, "losses": recent, "log_vocab": uniform,
                  "best_loss": state.best_loss},
        fix="lower the learning rate, clip gradients, and check the scaling of the adapters "
            "(LD405)")])


@rule("LD426", "loss-exactly-zero", command="watch", severity=Severity.ERROR)
def loss_exactly_zero(state) -> Outcome:
    """The training loss is exactly 0.

    ## What it does
    Reports the first step whose loss is exactly 0.0.

    ## Why is this bad?
    A real cross-entropy is never exactly zero. A 0 comes from a loss summed over zero
    supervised tokens (every label -100, a custom loss that returns 0 for an empty mask) or
    from labels the model sees as inputs (it copies them): the step teaches nothing.

    ## Example
    ```python
    loss = (ce * mask).sum() / mask.sum().clamp(min=1)   # 0 when the mask is empty
    ```

    ## Use instead
    ```python
    loradoctor.gate(model=model, tokenizer=tokenizer, dataset=train_ds)  # LD101 before training
    ```
    """
    if state.loss != 0.0:
        return Outcome()
    return Outcome([loss_exactly_zero.finding(
        f"the loss is exactly 0, so the batch supervised nothing",
        location=f"step {state.step}", evidence={"step": state.step, "loss": 0.0},
        fix="check that the batch supervises tokens (LD101) and that labels are not the "
            "inputs the model reads")])


RULES = [non_finite_loss, non_finite_gradient_norm, zero_gradient_norm, loss_frozen,
         adapters_still_zero, loss_collapsed_to_uniform, loss_exactly_zero]
