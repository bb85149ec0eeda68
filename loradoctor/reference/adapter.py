"""Reference run for the saved adapter: trained for real, saved from the DDP wrapper, served as
the base model.

- `ddp-adapter`: a PEFT LoRA on the tiny Qwen3 trained a few real AdamW steps through
  `DistributedDataParallel` (gloo, one process), then saved two ways: the state dict of the
  wrapped model written as `adapter_model.safetensors` beside the config (the bug: every key
  starts with `module.`), and `model.module.save_pretrained` (the fix). Each folder is loaded
  with `PeftModel.from_pretrained` on a fresh base, and check-adapter runs on each.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from pathlib import Path

from .runs import ReferenceRun, RunOutcome

STEPS = 6


def _ddp_train(model_dir: Path, out: Path) -> dict:
    """Train through DDP (one gloo process) and save the buggy and the fixed folder."""
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file
    from torch.nn.parallel import DistributedDataParallel

    from ..model.adapter_specimens import LR, batch, peft_model
    from ..model.safety import rng_preserved
    from ..model.training import train

    store = out / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        with rng_preserved(0):
            model = peft_model(model_dir)
            b = batch(model)
            with torch.no_grad():
                model.eval()
                start = model(input_ids=b["input_ids"]).logits.float()
            ddp = DistributedDataParallel(model)
            run = train(ddp, b, STEPS, lr=LR)
            model.eval()
            with torch.no_grad():
                trained = model(input_ids=b["input_ids"]).logits.float()
        # The bug: the wrapper's state dict (every key "module." + name), saved by hand.
        bug = out / "saved-from-ddp"
        bug.mkdir()
        state = {k: v.detach().cpu().contiguous() for k, v in ddp.state_dict().items()
                 if "lora_" in k}
        save_file(state, str(bug / "adapter_model.safetensors"))
        ddp.module.peft_config["default"].save_pretrained(str(bug))
        # The fix: save the unwrapped model.
        fixed = out / "saved-with-module-save_pretrained"
        ddp.module.save_pretrained(str(fixed))
    finally:
        dist.destroy_process_group()
    return {"losses": run.losses, "error": run.error, "bug": bug, "fixed": fixed,
            "input_ids": b["input_ids"], "trained_moved": float((trained - start).abs().max()),
            "trained_logits": trained, "keys": sorted(state)[:1]}


def _serve(model_dir: Path, folder: Path, input_ids) -> dict:
    """Load `folder` with PeftModel.from_pretrained on a fresh base, as a user serving it would."""
    import torch
    from peft import PeftModel

    from ..inputs.pretrained import load_model
    base = load_model(model_dir)
    with torch.no_grad():
        base_logits = base(input_ids=input_ids).logits.float()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        served = PeftModel.from_pretrained(base, str(folder))
    served.eval()
    with torch.no_grad():
        logits = served(input_ids=input_ids).logits.float()
    said = [str(w.message).split(":")[0] for w in caught if "adapter keys" in str(w.message)]
    return {"logits": logits, "base_diff": float((logits - base_logits).abs().max()),
            "warned": said}


def _flagged(model_dir: Path, folder: Path) -> tuple[list[str], object]:
    """What check-adapter reports (errors and warnings) on the folder."""
    from .. import engine, registry
    from ..context import AdapterContext
    from ..findings import Severity

    ctx = AdapterContext(folder, model_dir)
    ctx.validate_inputs()
    report = engine.run("check-adapter", registry.rules_for("adapter"), ctx)
    codes = sorted({f.code for f in report.findings
                    if f.severity in (Severity.ERROR, Severity.WARNING)})
    return codes, report


def run_ddp_adapter() -> RunOutcome:
    """An adapter saved from the DDP wrapper loads as nothing: PEFT serves the base model.

    The same trained adapter, saved two ways. From the wrapper, every key carries `module.`;
    `PeftModel.from_pretrained` only warns ("Found missing adapter keys") and the served
    model's logits equal the base model's exactly, although training moved them. Saved with
    `model.module.save_pretrained`, the served model is the trained one. check-adapter, run on
    each folder, names the prefix on the first and passes the second.
    """
    from .. import assets

    qwen = assets.tiny_qwen3_dir()
    with tempfile.TemporaryDirectory(prefix="loradoctor-ref-") as tmp:
        t = _ddp_train(qwen, Path(tmp))
        bug, fixed = (_serve(qwen, t[k], t["input_ids"]) for k in ("bug", "fixed"))
        fixed_vs_trained = float((fixed["logits"] - t["trained_logits"]).abs().max())
        flagged_bug, report = _flagged(qwen, t["bug"])
        flagged_fixed, _ = _flagged(qwen, t["fixed"])
    ld510 = next((f for f in report.findings if f.code == "LD510"), None)
    curves = {"PEFT LoRA trained through DDP": t["losses"]}
    flagged = {"saved from the DDP wrapper": flagged_bug,
               "saved with model.module.save_pretrained": flagged_fixed}
    verdict = [
        f"training moved the logits by up to {t['trained_moved']:.3g} in {STEPS} steps "
        f"(loss {_span(t['losses'])})",
        f"saved from the DDP wrapper (keys like {t['keys'][0]!r}): PEFT "
        + (f"warned {bug['warned'][0]!r} and " if bug["warned"] else "")
        + f"serves logits max |diff| {bug['base_diff']:.3g} from the base model: the base",
        f"saved with model.module.save_pretrained: served logits max |diff| "
        f"{fixed_vs_trained:.2g} from the trained model ({fixed['base_diff']:.3g} from the base)",
    ]
    if ld510 is not None:
        verdict.append(f"loradoctor check-adapter on the first: LD510 {ld510.message[:150]}...")
    reproduced = (
        t["error"] is None and len(t["losses"]) == STEPS
        and all(map(math.isfinite, t["losses"])) and t["losses"][-1] < t["losses"][0]
        and t["trained_moved"] > 1e-3 and bug["base_diff"] == 0.0 and bool(bug["warned"])
        and fixed_vs_trained < 1e-4 and fixed["base_diff"] > 1e-3
        and "LD510" in flagged_bug and "LD515" in flagged_bug and flagged_fixed == []
    )
    return RunOutcome(curves, flagged, verdict, reproduced,
                      flagged_when="after training (check-adapter)")


def _span(losses: list[float]) -> str:
    if not losses:
        return "none (no step ran)"
    return f"{losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps"


RUNS = [
    ReferenceRun("ddp-adapter", "an adapter saved from the DDP wrapper vs save_pretrained",
                 run_ddp_adapter),
]
