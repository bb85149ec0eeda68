"""Where a model's weights live: whether they fit in memory (else static mode), and, for a
model accelerate offloaded, bringing a layer's weights in and finding its execution device.

`static_reason` decides static mode for a model directory: no weight files, or weights that
would not fit `COPIES` times in fp32 into available memory. `weights_of` and `device_for` let
the per-layer probe call one offloaded layer at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

# check-model keeps the base model and a fresh adapted copy (the persistence round trip) in
# fp32 at the same time: the weights must fit this many times into available memory.
COPIES = 2
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "float64": 8,
          "int8": 1, "uint8": 1, "float8_e4m3fn": 1, "float8_e5m2": 1}


# --- does the model fit? -------------------------------------------------------------------


def available_memory(device: str = "cpu") -> int | None:
    """Bytes the run can still use on `device`: MemAvailable from /proc/meminfo on the CPU
    (else physical pages from sysconf), free memory on a CUDA device; None when unknown."""
    if device.startswith("cuda"):
        try:
            import torch
            free, _total = torch.cuda.mem_get_info(torch.device(device))
            return int(free)
        except Exception:  # noqa: BLE001 - no CUDA: nothing to say
            return None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def weight_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in Path(model_dir).iterdir()
                  if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
                  and not p.name.startswith(("training_args", "optimizer", "scheduler")))


def fp32_bytes(model_dir: Path) -> int | None:
    """What the weights take once loaded in fp32 (check-model's dtype): the safetensors index's
    `total_size` (else the weight files' sizes) scaled from the stored dtype in config.json."""
    d = Path(model_dir)
    stored = None
    for index in sorted(d.glob("*.index.json")):
        try:
            stored = int(json.loads(index.read_text(encoding="utf-8"))["metadata"]["total_size"])
            break
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if stored is None:
        files = weight_files(d)
        if not files:
            return None
        stored = sum(p.stat().st_size for p in files)
    try:
        config = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32").replace("torch.", "")
    return stored * 4 // _BYTES.get(dtype, 4)


def static_reason(model_dir: Path | None, device: str = "cpu") -> str | None:
    """Why `model_dir` must be checked statically (no weights, or too large), else None."""
    if model_dir is None or not Path(model_dir).is_dir():
        return None
    if not (Path(model_dir) / "config.json").exists():
        return None  # load.load_model says what is wrong with it
    if not weight_files(model_dir):
        return f"{model_dir} holds no weight files (only its config)"
    need = fp32_bytes(model_dir)
    have = available_memory(device)
    if need is None or have is None or need * COPIES <= have:
        return None
    return (f"its weights take {_gb(need)} in fp32 and check-model keeps {COPIES} copies, "
            f"but {_gb(have)} of {'GPU' if device.startswith('cuda') else ''} memory is "
            f"available".replace("of  memory", "of memory"))


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GB"


# --- offloaded weights ---------------------------------------------------------------------


def is_offloaded(module) -> bool:
    hook = getattr(module, "_hf_hook", None)
    return bool(getattr(hook, "offload", False))


@contextlib.contextmanager
def weights_of(*modules) -> Iterator[None]:
    """The modules' offloaded weights brought in for the block (no-op for weights in memory)."""
    with contextlib.ExitStack() as stack:
        for m in modules:
            if m is not None and is_offloaded(m):
                from accelerate.utils import align_module_device
                stack.enter_context(align_module_device(m))
        yield


def device_for(module, tensor):
    """Where an input for `module` must go: its hook's execution device when its weights are
    offloaded (they sit on the meta device between calls), else the tensor's device."""
    hook = getattr(module, "_hf_hook", None)
    if tensor.device.type == "meta" and hook is not None:
        return getattr(hook, "execution_device", None) or "cpu"
    return tensor.device
