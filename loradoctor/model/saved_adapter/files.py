"""What the saved adapter's file holds: its tensors and config, read without executing
anything (safetensors, or a pickle with `weights_only=True`), and the user's load function
beside their apply function for a file their own save function wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import InputError
from ...text import one_line
from ..shared import SAVE_LOAD_NAMES, user_save_load

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass
class Artifact:
    """The saved adapter as read from disk (tensors on the CPU, as stored)."""

    path: Path
    kind: str                         # "peft" | "user"
    file: Path                        # the weights file read
    tensors: dict[str, Any]           # key -> torch.Tensor
    config: dict | None = None        # adapter_config.json (PEFT)
    load_fn: Any = None               # the user's load function (kind "user")
    save_name: str | None = None


def load_artifact(path: Path, apply_fn=None, apply_spec: str | None = None) -> Artifact:
    """Read the artifact at `path` (InputError when it cannot be read)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"adapter {path}: no such file or directory")
    if apply_fn is not None:
        load_fn, save_name = _user_load(apply_fn, apply_spec)
        file = path
        if path.is_dir():
            found = [path / f for f in WEIGHT_FILES if (path / f).is_file()]
            file = found[0] if found else path
        tensors = read_tensors(file) if file.is_file() else {}
        return Artifact(path, "user", file, tensors, None, load_fn, save_name)
    if not path.is_dir():
        raise InputError(f"adapter {path}: a single file is checked with --apply SPEC (your apply "
                         f"function, with the load function beside it); a PEFT adapter is a "
                         f"folder with {CONFIG_FILE}")
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise InputError(f"adapter {path}: no {CONFIG_FILE}, not a PEFT adapter folder (for a "
                         f"file your own save function wrote, pass --apply SPEC)")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{cfg_path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise InputError(f"{cfg_path}: expected a JSON object")
    files = [path / f for f in WEIGHT_FILES if (path / f).is_file()]
    if not files:
        raise InputError(f"adapter {path}: neither {' nor '.join(WEIGHT_FILES)} is there")
    tensors = read_tensors(files[0])
    if not tensors:
        raise InputError(f"{files[0]}: holds no tensor")
    return Artifact(path, "peft", files[0], tensors, config)


def read_tensors(file: Path) -> dict[str, Any]:
    """Tensors from safetensors, or from a pickle with `weights_only=True` (nothing executed)."""
    import torch

    if file.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return dict(load_file(str(file)))
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
            raise InputError(f"{file}: cannot be read as safetensors: {read_error(exc)}") from exc
    try:
        obj = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{file}: cannot be loaded with torch.load(weights_only=True) "
                         f"({read_error(exc)}); loradoctor never unpickles objects beyond "
                         f"tensors") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # a checkpoint dict around the state
    if not isinstance(obj, dict):
        raise InputError(f"{file}: holds a {type(obj).__name__}, not a dict of tensors")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _user_load(apply_fn, spec):
    """The user's load function beside the apply function, and its save function's name."""
    _save, load, save_name = user_save_load(apply_fn, load_only=True)
    if load is not None:
        return load, save_name
    names = ", ".join(n for _, n in SAVE_LOAD_NAMES)
    raise InputError(f"--apply {spec}: no load function beside it ({names}, taking (model, "
                     f"path)), so the saved file cannot be loaded the way your code loads it")


def read_error(exc: BaseException) -> str:
    """The exception in one line; for a state-dict size error, with its first mismatch."""
    return one_line(exc, "size mismatch")


def artifact(ctx) -> Artifact:
    return ctx.memo("artifact", lambda: load_artifact(ctx.adapter_dir, ctx.apply_fn,
                                                      ctx.apply_spec))
