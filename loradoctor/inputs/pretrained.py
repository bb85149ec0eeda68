"""Local Hugging Face directories: models and tokenizers, never fetched from a hub.

Each function returns what was asked for or raises `InputError` with one line that names the
directory (missing, a file, a hub id, a loader failure). `load_model(..., quantize="4bit")`
loads a QLoRA base the way QLoRA guides do (bitsandbytes, imported only then).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import InputError
from ..text import one_line

DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
          "half": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}

# `--quantize`: the bitsandbytes settings QLoRA guides load a base with.
QUANTIZE = ("4bit", "8bit")

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


def load_model(path: str | Path, dtype: str = "fp32", device: str = "cpu",
               quantize: str | None = None):
    """A causal LM from a local directory, in `dtype` on `device`, in eval mode.

    With `quantize` ("4bit" or "8bit") its Linear layers are quantized by bitsandbytes as they
    load (`quantization_config`), placed on `device` by `device_map`: a quantized model cannot
    be moved afterwards. `dtype` is then the dtype of the layers left unquantized.
    """
    from transformers import AutoModelForCausalLM

    d = local_dir(path, "model")
    if not (d / "config.json").exists():
        raise InputError(f"model {path}: no config.json, not a Hugging Face model directory")
    placement = {}
    if quantize is not None:
        placement = {"quantization_config": quantization_config(quantize),
                     "device_map": {"": device}}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch_dtype(dtype),
                                                     local_files_only=True, **placement)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"model {path}: cannot be loaded{_quantized(quantize)}: "
                         f"{one_line(exc)}{own_class_hint(d)}") from exc
    return (model if quantize is not None else model.to(device)).eval()


def _quantized(quantize: str | None) -> str:
    return f" in {quantize}" if quantize is not None else ""


def check_quantize(value: str | None) -> str | None:
    """`--quantize` as given ("4bit", "8bit", or None), or an InputError naming the choices."""
    if value is None or value in QUANTIZE:
        return value
    raise InputError(f"--quantize {value!r}: expected one of {', '.join(QUANTIZE)}")


def quantization_config(quantize: str):
    """The `BitsAndBytesConfig` QLoRA guides load a base with: 4-bit NF4 computing in bf16,
    or 8-bit (`load_in_8bit`)."""
    import torch
    from transformers import BitsAndBytesConfig

    check_quantize(quantize)
    import_bitsandbytes()
    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=torch.bfloat16)


def import_bitsandbytes():
    """The `bitsandbytes` module, imported once, or an InputError saying how to install it.

    On a CPU with AVX512-BF16 its import looks for an optional kernel on the Hugging Face hub
    (through the `kernels` package) and logs warnings when it cannot fetch it (always,
    offline); bitsandbytes then uses its own kernel, so the warnings are kept out of the report.
    """
    import importlib
    import logging

    quiet = [logging.getLogger(name) for name in ("bitsandbytes.backends.cpu.ops", "kernels")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        return importlib.import_module("bitsandbytes")
    except ImportError as exc:
        raise InputError("--quantize needs bitsandbytes: pip install 'loradoctor[qlora]' "
                         f"({one_line(exc)})") from exc
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)


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
