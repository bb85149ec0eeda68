"""Reference runs for adapter wiring and initialisation: each bug happening for real.

- `closure`: MiniMind's `apply_lora` with the late-binding closure bug against the fixed one,
  on a tiny Llama. On every linear layer (the last one patched is down_proj, 160 -> 64) the
  buggy model crashes at step 0 with a matmul shape error; on q/o only (all 64 -> 64) it
  trains without an error and is garbage: damaged from step 0, and only the last layer's
  adapter ever trains. (check-model's tests show the same crash on a tiny Qwen3 and the real
  SmolLM2; the tiny Llama keeps this run to a few seconds.)
- `init`: B initialised randomly (damaged start) and A zeroed after attaching with B zero
  (frozen adapter) against the correct init, on a tiny Llama.

In both, what loradoctor flags comes from running check-model's LD2/LD4/LD5 rules through
the engine on each pipeline *before* training; the training is a plain AdamW loop.
"""

from __future__ import annotations

import math

from .runs import ReferenceRun, RunOutcome

STEPS = 8
BATCH = (2, 32)     # (batch, tokens) of the training batch and of the checks' probe batch
LR = 1e-3


def _flagged(model_dir, fn_name: str) -> tuple[list[str], object]:
    """The codes check-model reports (errors and warnings) on this pipeline, before training."""
    from .. import engine, registry
    from ..context import ModelContext
    from ..findings import Severity
    from .minimind import SPEC

    ctx = ModelContext(model_dir, apply_spec=f"{SPEC}:{fn_name}",
                       apply_kwargs={"rank": 8, "alpha": 16}, probe_shape=BATCH)
    ctx.validate_inputs()
    rules = registry.select(registry.MODEL_RULES, ["LD2", "LD4", "LD5"])
    report = engine.run("check-model", rules, ctx)
    codes = sorted({f.code for f in report.findings
                    if f.severity in (Severity.ERROR, Severity.WARNING)})
    return codes, report


def _train(model_dir, fn_name: str, steps: int = STEPS) -> dict:
    """Load, apply, measure the start against the base, train `steps` AdamW steps."""
    import torch

    from ..model.adapters import discover
    from ..inputs.pretrained import load_model
    from ..model.convention import logits
    from ..model.safety import rng_preserved
    from ..model.training import train
    from . import minimind

    with rng_preserved(0):
        model = load_model(model_dir)
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, model.config.vocab_size, BATCH, generator=gen)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
        with torch.no_grad():
            base = logits(model, {"input_ids": ids})  # (B, T, V)
        getattr(minimind, fn_name)(model, rank=8, alpha=16)
        adapters = discover(model).adapters
        start_diff = None
        try:
            with torch.no_grad():
                start_diff = float((logits(model, {"input_ids": ids}) - base).abs().max())
        except Exception:  # noqa: BLE001 - the crash is recorded by the training run below
            pass
        before = [(a.A.detach().clone(), a.B.detach().clone()) for a in adapters]
        run = train(model, batch, steps, lr=LR)
        trained = [a.name for a, (A, B) in zip(adapters, before)
                   if not (torch.equal(a.A, A) and torch.equal(a.B, B))]
    return {"losses": run.losses, "error": run.error, "start_diff": start_diff,
            "adapters": len(adapters), "trained": trained}


def _falling(losses: list[float]) -> bool:
    return len(losses) >= 2 and all(map(math.isfinite, losses)) and losses[-1] < losses[0]


def run_closure() -> RunOutcome:
    """The late-binding closure bug crashes (shape error) or trains garbage; the fix trains.

    MiniMind-style `apply_lora` patches `module.forward` in a loop with a closure; every
    patched layer then runs the last layer's forward and adapter. On all linear layers of a
    tiny Llama the shapes differ and step 0 raises a matmul shape error deep in attention;
    loradoctor, run before training, says which layer each one really runs. On the q/o
    projections only the shapes are equal: training runs, the start already differs from the
    base model, and only the last layer's adapter ever gets a gradient. The fixed `apply_lora` (loop values
    bound as default arguments) starts at the base model and trains every adapter.
    """
    from .. import assets

    llama = assets.tiny_llama_dir()
    pipelines = [
        ("closure bug", llama, "apply_lora"),
        ("fixed (default arguments)", llama, "apply_lora_fixed"),
        ("closure bug, q/o only", llama, "apply_lora_attention"),
        ("fixed, q/o only", llama, "apply_lora_attention_fixed"),
    ]
    curves, flagged, runs, reports = {}, {}, {}, {}
    for label, model_dir, fn in pipelines:
        flagged[label], reports[label] = _flagged(model_dir, fn)
        runs[label] = _train(model_dir, fn)
        curves[label] = runs[label]["losses"]
    crash, fixed, garbage, fixed_qo = (runs[p[0]] for p in pipelines)
    verdict = []
    aliased = [f for f in reports[pipelines[0][0]].findings if f.code == "LD201"]
    example = aliased[0].evidence if aliased else {}
    verdict.append(
        f"{pipelines[0][0]}: " + (f"crashed at {crash['error']}" if crash["error"] else
                                  "did not crash")
        + (f". loradoctor explained it before training: {example.get('module')} runs the "
           f"forward of {example.get('forward_of')} (LD201), so its "
           f"{example['behaviour']['width']}-wide input meets a layer that takes "
           f"{example['behaviour']['ran_at_width']}" if example.get("behaviour") else ""))
    verdict.append(f"{pipelines[1][0]}: loss {_span(fixed['losses'])}, "
                   f"{len(fixed['trained'])} of {fixed['adapters']} adapters trained")
    verdict.append(
        f"{pipelines[2][0]}: no error, but garbage: at step 0 the logits differ from the base "
        f"by {garbage['start_diff']:.3g} (fixed: {fixed_qo['start_diff']:.3g}), and only "
        f"{len(garbage['trained'])} of {garbage['adapters']} adapters ever changes "
        f"({', '.join(garbage['trained']) or 'none'}: every patched layer uses it)"
        if garbage["start_diff"] is not None else f"{pipelines[2][0]}: {garbage['error']}")
    verdict.append(f"{pipelines[3][0]}: loss {_span(fixed_qo['losses'])}, "
                   f"{len(fixed_qo['trained'])} of {fixed_qo['adapters']} adapters trained")
    reproduced = (
        crash["error"] is not None and "shape" in crash["error"]
        and "LD201" in flagged[pipelines[0][0]] and "LD201" not in flagged[pipelines[1][0]]
        and _falling(fixed["losses"]) and len(fixed["trained"]) == fixed["adapters"]
        and garbage["error"] is None and (garbage["start_diff"] or 0) > 1e-3
        and len(garbage["trained"]) < garbage["adapters"]
        and "LD201" in flagged[pipelines[2][0]] and "LD201" not in flagged[pipelines[3][0]]
        and fixed_qo["start_diff"] == 0.0 and _falling(fixed_qo["losses"])
    )
    marks = {pipelines[2][0]: (0, f"garbage from the start: logits {garbage['start_diff']:.3g} "
                                  f"from the base")} if garbage["start_diff"] else {}
    return RunOutcome(curves, flagged, verdict, reproduced, marks)


def run_init() -> RunOutcome:
    """B random damages the start; A zeroed (B zero) freezes the adapter; the correct init trains.

    Three MiniMind-style inits on a tiny Llama, each trained with the same AdamW loop: the
    correct one (A Kaiming, B zero) starts exactly at the base model and every adapter trains;
    B Kaiming-initialised starts away from the base model (the logits differ before any
    step); A zeroed after attaching, with B zero, gets no gradient at all, so the loss does
    not move and no adapter changes.
    """
    from .. import assets

    llama = assets.tiny_llama_dir()
    pipelines = [
        ("correct init (A Kaiming, B zero)", "apply_lora_fixed"),
        ("B random", "apply_lora_b_random"),
        ("A zeroed, B zero", "apply_lora_a_zero"),
    ]
    curves, flagged, runs = {}, {}, {}
    for label, fn in pipelines:
        flagged[label], _ = _flagged(llama, fn)
        runs[label] = _train(llama, fn)
        curves[label] = runs[label]["losses"]
    good, b_random, a_zero = (runs[p[0]] for p in pipelines)
    verdict = [
        f"{pipelines[0][0]}: starts at the base model (max |logit diff| "
        f"{good['start_diff']:.2g}); loss {_span(good['losses'])}; {len(good['trained'])} of "
        f"{good['adapters']} adapters trained",
        f"{pipelines[1][0]}: damaged start, the logits differ from the base by up to "
        f"{b_random['start_diff']:.3g} before any step (step-0 loss {b_random['losses'][0]:.4f} "
        f"vs {good['losses'][0]:.4f})" if b_random["losses"] else f"{pipelines[1][0]}: "
        f"{b_random['error']}",
        f"{pipelines[2][0]}: frozen adapter, loss {_span(a_zero['losses'])} "
        f"({'flat' if len(set(a_zero['losses'])) == 1 else 'moving'}); "
        f"{len(a_zero['trained'])} of {a_zero['adapters']} adapters changed",
    ]
    reproduced = (
        not [c for c in flagged[pipelines[0][0]] if c.startswith("LD4")]
        and good["start_diff"] == 0.0 and _falling(good["losses"])
        and len(good["trained"]) == good["adapters"]
        and (b_random["start_diff"] or 0) > 1e-3 and "LD401" in flagged[pipelines[1][0]]
        and "LD403" in flagged[pipelines[1][0]]
        and len(a_zero["losses"]) == STEPS and len(set(a_zero["losses"])) == 1
        and not a_zero["trained"] and "LD402" in flagged[pipelines[2][0]]
    )
    marks = {pipelines[1][0]: (0, f"damaged start: logits {b_random['start_diff']:.3g} from "
                                  f"the base")} if b_random["start_diff"] else {}
    return RunOutcome(curves, flagged, verdict, reproduced, marks)


def _span(losses: list[float]) -> str:
    if not losses:
        return "none (no step ran)"
    return f"{losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps"


RUNS = [
    ReferenceRun("closure", "closure-aliased apply_lora vs the fixed one", run_closure),
    ReferenceRun("init", "B random / A zero vs the correct init", run_init),
]
