"""Reference runs for the numerics family: fp16 failing for real where the fix trains.

- `fp16-overflow`: the same LoRA fine-tune (fp32 adapters, AdamW, a GradScaler for fp16) on a
  model with large activations, with the frozen base in fp16 and in bf16. The real
  SmolLM2-135M is measured first: it peaks near 25,000 and does not overflow, so the run uses
  `specimens.large_activation_dir()`, a tiny Llama whose layer-1 MLP reproduces the T5 pattern
  (an MLP output past 65,504; its docstring says exactly what was scaled). fp16: nan from step
  0, first inf at `model.layers.1.mlp.down_proj`; bf16: trains.
- `fp16-adamw`: pure-fp16 LoRA parameters under a plain `torch.optim.AdamW` against fp32
  adapters (master weights) with a GradScaler, both on an fp16 tiny Llama. Pure fp16: nan
  after the first step (eps=1e-8 is 0 in fp16); fp32 master weights: trains.

What loradoctor flags comes from running check-model's LD3 rules through the engine on each
pipeline before training (`--dtypes` set to the dtype the pipeline trains in).
"""

from __future__ import annotations

import math

from .runs import ReferenceRun, RunOutcome

STEPS = 10
BATCH = (4, 32)  # (batch, tokens) of the training batch
LR = 1e-2  # high, so that ten steps on one batch visibly move the loss
SPEC = "loradoctor.model.numerics.specimens"


def _flagged(model_dir, fn_name: str, kwargs: dict,
             dtypes: tuple[str, ...]) -> tuple[list[str], object]:
    """Error and warning codes of the LD3 rules on this pipeline, before any training."""
    from .. import engine, registry
    from ..context import ModelContext
    from ..findings import Severity

    ctx = ModelContext(model_dir, apply_spec=f"{SPEC}:{fn_name}", apply_kwargs=kwargs,
                       dtypes=dtypes, probe_shape=BATCH)
    ctx.validate_inputs()
    report = engine.run("check-model", registry.select(registry.MODEL_RULES, ["LD3"]), ctx)
    codes = sorted({f.code for f in report.findings
                    if f.severity in (Severity.ERROR, Severity.WARNING)})
    return codes, report


def _train(model_dir, fn_name: str, kwargs: dict, *, scaler: bool) -> dict:
    """Load, apply the pipeline, train STEPS AdamW steps on one fixed batch.

    The first step runs under forward hooks that name the first module whose output is inf/nan.
    """
    import torch

    from ..inputs.pretrained import load_model
    from ..model.convention import call, loss
    from ..model.numerics import specimens
    from ..model.numerics.recorder import ModuleRecorder

    torch.manual_seed(0)
    model = load_model(model_dir, "fp32", "cpu")
    getattr(specimens, fn_name)(model, **kwargs)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR)
    grad_scaler = torch.amp.GradScaler("cpu", enabled=scaler)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, BATCH, generator=gen)
    batch = {"input_ids": ids, "labels": ids}  # aligned: the model shifts them itself
    losses, first_bad = [], None
    for step in range(STEPS):
        if step == 0:
            with ModuleRecorder(model, backward=False) as rec:
                out = call(model, batch, labels=True, use_cache=False)
            bad = [s for s in rec.stats() if not s.finite]
            first_bad = min(bad, key=lambda s: s.order).name if bad else None
        else:
            out = call(model, batch, labels=True, use_cache=False)
        step_loss = loss(out, batch)
        losses.append(float(step_loss.detach()))
        opt.zero_grad(set_to_none=True)
        grad_scaler.scale(step_loss).backward()
        grad_scaler.step(opt)
        grad_scaler.update()
    nonfinite_params = sum(int((~torch.isfinite(p.detach())).sum()) for p in params)
    return {"losses": losses, "first_bad": first_bad, "nonfinite_params": nonfinite_params,
            "n_params": sum(p.numel() for p in params)}


def _smollm2_headroom() -> str:
    """The real SmolLM2-135M's largest fp32 activation on a chat batch (forward only)."""
    import torch

    from ..context import ModelContext
    from ..errors import InputError
    from ..model.convention import call
    from ..model.numerics.passes import FP16_MAX
    from ..model.numerics.recorder import ModuleRecorder

    try:
        from ..assets import smollm2_dir
        ctx = ModelContext(smollm2_dir(), probe_shape=(1, 64))
        model, probe = ctx.base_model, ctx.probe
    except (InputError, OSError) as exc:
        return f"SmolLM2-135M not available here ({exc}): its headroom was not measured"
    with torch.no_grad(), ModuleRecorder(model, backward=False) as rec:
        call(model, probe, use_cache=False)
    stats = [s for s in rec.stats() if s.finite]
    top = max(stats, key=lambda s: s.peak)
    return (f"real SmolLM2-135M-Instruct, fp32, 64 chat tokens: largest activation "
            f"{top.peak:,.0f} at {top.name}, headroom {FP16_MAX / top.peak:.1f}x to 65,504: "
            f"no overflow, so the fp16 failure is shown on the constructed model below")


def fp16_overflow() -> RunOutcome:
    """The same LoRA fine-tune with the base in fp16 and in bf16, on a model with large activations.

    The model is `specimens.large_activation_dir()`: the tiny seeded Llama with
    `model.layers.1.post_attention_layernorm.weight` x 64 and `model.layers.1.mlp.down_proj.weight`
    x 2,048, so that down_proj's output peaks past 65,504 (the T5 pattern). Both pipelines
    keep the LoRA adapters in fp32 and train with AdamW (and a GradScaler in fp16), so the only
    difference is the base dtype. fp16: the loss is nan at step 0 and every step after (the
    scaler skips every step), and the forward hooks name the first inf module; bf16: finite,
    decreasing loss. loradoctor flags LD301 on the fp16 pipeline and nothing on bf16.
    """
    from ..model.numerics.specimens import LARGE_ACTIVATION_DOWN_SCALE, large_activation_dir

    model_dir = large_activation_dir()
    smol = _smollm2_headroom()
    args = {"rank": 8, "alpha": 16}
    flagged16, report16 = _flagged(model_dir, "apply_lora_fp32_adapters",
                                   {**args, "base_dtype": "fp16"}, ("fp32", "fp16"))
    flagged_bf, _ = _flagged(model_dir, "apply_lora_fp32_adapters",
                             {**args, "base_dtype": "bf16"}, ("fp32", "bf16"))
    fp16 = _train(model_dir, "apply_lora_fp32_adapters", {**args, "base_dtype": "fp16"},
                  scaler=True)
    bf16 = _train(model_dir, "apply_lora_fp32_adapters", {**args, "base_dtype": "bf16"},
                  scaler=False)
    ld301 = [f for f in report16.findings if f.code == "LD301"]
    fp16_broken = not math.isfinite(fp16["losses"][0]) and not any(
        math.isfinite(x) for x in fp16["losses"])
    bf16_trains = all(math.isfinite(x) for x in bf16["losses"]) and \
        bf16["losses"][-1] < bf16["losses"][0] - 0.1
    # The adapters wrap each Linear, so the inf comes from `down_proj.base`, the frozen Linear.
    named = (fp16["first_bad"] or "").startswith("model.layers.1.mlp.down_proj")
    reproduced = (fp16_broken and bf16_trains and named and "LD301" in flagged16
                  and not flagged_bf and bool(ld301) and ld301[0].location == fp16["first_bad"])
    verdict = [
        smol,
        f"tiny Llama, layer-1 down_proj x {LARGE_ACTIVATION_DOWN_SCALE:,.0f}: fp16 loss "
        f"{fp16['losses'][0]} from step 0, first inf at {fp16['first_bad']}"
        + (f" ({ld301[0].evidence['fp32_peak']:,.0f} in fp32)" if ld301 else ""),
        f"same fine-tune in bf16: loss {bf16['losses'][0]:.3f} -> {bf16['losses'][-1]:.3f} "
        f"over {STEPS} steps, no inf/nan",
    ]
    return RunOutcome(curves={"fp16 base": fp16["losses"], "bf16 base": bf16["losses"]},
                      flagged={"fp16 base": flagged16, "bf16 base": flagged_bf},
                      verdict=verdict, reproduced=reproduced)


def fp16_adamw() -> RunOutcome:
    """Pure-fp16 LoRA parameters under AdamW against fp32 adapters (master weights).

    Both pipelines load the tiny seeded Llama in fp16 and attach rank-8 adapters to every
    linear layer but lm_head. "fp16 adapters": the adapters are fp16 too and a plain
    `torch.optim.AdamW` updates them (no GradScaler: it refuses fp16 gradients). AdamW's
    eps=1e-8 is 0 in fp16 and its second moment underflows, so the first step divides by zero:
    the adapters are nan and the loss is nan from step 1. "fp32 adapters": the same with the
    adapters in fp32 and a GradScaler: trains. loradoctor flags LD305 on the first and nothing
    on the second.
    """
    from ..assets import tiny_llama_dir

    model_dir = tiny_llama_dir()
    args = {"rank": 8, "alpha": 16}
    flagged_bad, report = _flagged(model_dir, "apply_lora_fp16_adapters", args, ("fp32", "fp16"))
    flagged_good, _ = _flagged(model_dir, "apply_lora_fp32_adapters",
                               {**args, "base_dtype": "fp16"}, ("fp32", "fp16"))
    bad = _train(model_dir, "apply_lora_fp16_adapters", args, scaler=False)
    good = _train(model_dir, "apply_lora_fp32_adapters", {**args, "base_dtype": "fp16"},
                  scaler=True)
    bad_breaks = math.isfinite(bad["losses"][0]) and not any(
        math.isfinite(x) for x in bad["losses"][1:])
    good_trains = all(math.isfinite(x) for x in good["losses"]) and \
        good["losses"][-1] < good["losses"][0] - 0.1
    reproduced = (bad_breaks and good_trains and "LD305" in flagged_bad
                  and "LD305" not in flagged_good)
    ld305 = [f for f in report.findings if f.code == "LD305"]
    verdict = [
        f"fp16 adapters + AdamW: loss {bad['losses'][0]:.3f} at step 0, then {bad['losses'][1]}; "
        f"{bad['nonfinite_params']:,} of {bad['n_params']:,} adapter values are nan/inf after "
        f"{STEPS} steps",
        f"fp32 adapters + GradScaler: loss {good['losses'][0]:.3f} -> {good['losses'][-1]:.3f}",
    ]
    if ld305:
        verdict.append(f"LD305 before training: {ld305[0].evidence['nonfinite_after_step']:,} of "
                       f"{ld305[0].evidence['simulated_values']:,} values nan/inf after one "
                       f"simulated AdamW step")
    return RunOutcome(curves={"fp16 adapters": bad["losses"], "fp32 adapters": good["losses"]},
                      flagged={"fp16 adapters": flagged_bad, "fp32 adapters": flagged_good},
                      verdict=verdict, reproduced=reproduced)


RUNS = [
    ReferenceRun("fp16-overflow", "fp16 overflows on large activations where bf16 trains",
                 fp16_overflow),
    ReferenceRun("fp16-adamw", "pure-fp16 AdamW on fp16 LoRA weights vs fp32 master weights",
                 fp16_adamw),
]
