"""Offloaded loading: check-model's value rules on a model larger than one device.

`check-model --offload` (`check(offload=True)`, or `offload={"cpu": "8GB"}` for accelerate's
`max_memory`) loads the model with accelerate's big-model loading, `device_map="auto"`: the
layers that fit go to the GPU, then to the CPU, and the rest to a temporary folder on disk
(removed after the run). Each offloaded layer's weights are brought in by accelerate's hook for
the call that needs them and dropped after, so the whole-model forwards (identity start,
gradient flow, training steps) run as they do on a model in memory; the per-layer probe of the
wiring rules brings one layer's weights in at a time (`placement.weights_of`).

Two families cannot work on offloaded weights and declare it (`runs_offloaded=False`), so
`registry.applicable` skips them with the reason: numerics (LD3xx) casts the whole model to
fp16 / bf16 copies, and persistence (LD5xx) perturbs the factors against the base weights'
norms, builds a second copy and merges `B @ A` into base weights in place, which offloaded
tensors (meta placeholders backed by files) do not allow.
"""

from __future__ import annotations

import shutil
import tempfile

from ..errors import InputError
from .shared import discovery


def parse_max_memory(text: str | dict | None) -> dict:
    """`cpu=2GB,0=20GB` (or a dict) as accelerate's `max_memory`: device keys (GPU index,
    `cpu`, `mps`) to sizes (`"2GB"` or bytes)."""
    if text is None or text is True:
        return {}
    if isinstance(text, dict):
        return {(int(k) if str(k).isdigit() else k): v for k, v in text.items()}
    out: dict = {}
    for part in str(text).split(","):
        key, sep, size = part.strip().partition("=")
        if not sep or not key or not size:
            raise InputError(f"--max-memory {text!r}: expected DEVICE=SIZE[,DEVICE=SIZE] "
                             f"(cpu=2GB,0=20GB)")
        out[int(key) if key.isdigit() else key] = int(size) if size.isdigit() else size
    return out


def load_offloaded(ctx):
    """The base model, fp32, eval mode, dispatched by accelerate over GPU, CPU and disk."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..text import one_line
    from ..inputs.pretrained import local_dir

    try:
        import accelerate  # noqa: F401
    except ImportError as exc:
        raise InputError("--offload needs the accelerate package: pip install accelerate") \
            from exc
    if ctx.model_dir is None:
        raise InputError("--offload loads a model directory (device_map=\"auto\"); a model "
                         "object or SPEC is placed by your own code")
    d = local_dir(ctx.model_dir, "model")
    folder = tempfile.mkdtemp(prefix="loradoctor-offload-")
    ctx.__dict__.setdefault("_offload_folders", []).append(folder)
    kwargs = {"max_memory": ctx.offload} if ctx.offload else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(d), dtype=torch.float32, device_map="auto", offload_folder=folder,
            local_files_only=True, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"model {ctx.model_dir}: cannot be loaded with device_map=\"auto\": "
                         f"{one_line(exc)}") from exc
    placed = getattr(model, "hf_device_map", {}) or {}
    ctx.summary["offload"] = {"device_map": {k: str(v) for k, v in placed.items()},
                              "disk": sum(1 for v in placed.values() if v == "disk"),
                              "max_memory": {str(k): v for k, v in (ctx.offload or {}).items()}}
    return model.eval()


def cleanup(ctx) -> None:
    for folder in ctx.__dict__.pop("_offload_folders", []):
        shutil.rmtree(folder, ignore_errors=True)


def fall_back_to_static(ctx, static_codes: list[str]) -> None:
    """Static mode for an offloaded model whose adapters have no values at all.

    Adapters the user's code created on an offloaded layer's weight device (`.to(
    module.weight.device)`, the meta device there) hold no values: the run falls back to static
    mode (`model/static.py`) and says so in the summary, with the rules that still run
    (`static_codes`)."""
    if getattr(ctx, "offload", None) is None:
        return
    on_meta = adapters_on_meta(ctx)
    if on_meta and not ctx.static:
        ctx.static = True
        ctx.static_why = (f"{on_meta[0]}'s adapter (and {len(on_meta) - 1} more) was created on "
                          f"the meta device, where its offloaded layer's weight sits between "
                          f"calls; create adapters on the hook's execution device")
        ctx.summary["static_mode"] = {"reason": ctx.static_why, "rules": list(static_codes)}


def adapters_on_meta(ctx) -> list[str]:
    return [a.name for a in discovery(ctx).adapters
            if a.A.device.type == "meta" or a.B.device.type == "meta"]
