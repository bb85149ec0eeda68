"""Local Hugging Face directories: models and tokenizers, never fetched from a hub.

Each function returns what was asked for or raises `InputError` with one line that names the
directory (missing, a file, a hub id, a loader failure).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import InputError
from ..text import one_line

DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
          "half": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def local_dir(path: str | Path, what: str) -> Path:
    """A local directory, or an InputError that says why not (missing, a file, a hub id)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise InputError(f"{what} {path}: is a file, expected a directory in Hugging Face layout")
    if _HUB_ID.match(str(path)) and not str(path).startswith((".", "/")):
        raise InputError(
            f"{what} {path}: no such local directory, and loradoctor never downloads from a hub; "
            f"download it first and pass the local folder"
        )
    raise InputError(f"{what} {path}: no such directory")


def load_tokenizer(path: str | Path):
    """A tokenizer from a local directory (offline; no hub)."""
    from transformers import AutoTokenizer

    d = local_dir(path, "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any loader failure is the user's input
        raise InputError(f"tokenizer {path}: cannot be loaded: {one_line(exc)}") from exc


def has_tokenizer(path: str | Path) -> bool:
    d = Path(path)
    return any((d / f).exists() for f in ("tokenizer.json", "tokenizer_config.json",
                                           "tokenizer.model", "vocab.json"))


def torch_dtype(name: str):
    import torch

    try:
        return getattr(torch, DTYPES[name.lower()])
    except KeyError:
        raise InputError(f"dtype {name!r}: expected one of fp32, fp16, bf16") from None


def resolve_device(name: str = "auto") -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name}: CUDA is not available on this machine")
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"device {name!r}: expected auto, cpu, cuda or cuda:N")
    return name


def load_model(path: str | Path, dtype: str = "fp32", device: str = "cpu"):
    """A causal LM from a local directory, in `dtype` on `device`, in eval mode."""
    from transformers import AutoModelForCausalLM

    d = local_dir(path, "model")
    if not (d / "config.json").exists():
        raise InputError(f"model {path}: no config.json, not a Hugging Face model directory")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch_dtype(dtype),
                                                     local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"model {path}: cannot be loaded: {one_line(exc)}"
                         f"{own_class_hint(d)}") from exc
    return model.to(device).eval()


def own_class_hint(d: Path) -> str:
    """For a `model_type` transformers does not know: how to pass the user's own class."""
    try:
        from transformers import CONFIG_MAPPING
        model_type = json.loads((d / "config.json").read_text(encoding="utf-8")).get("model_type")
    except Exception:  # noqa: BLE001 - no hint is better than a second error
        return ""
    if not model_type or model_type in CONFIG_MAPPING:
        return ""
    return (f"; model_type {model_type!r} is your own architecture: pass its class, e.g. "
            f"--model path/to/model.py:YourForCausalLM --model-arg path={d}")
