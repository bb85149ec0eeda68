"""The user's code and settings named on the command line: SPECs, KEY=VALUE arguments, PEFT.

`load_spec("path/to/file.py:NAME")` imports the user's file (its folder on `sys.path` while it
imports, no `__pycache__` written) and returns NAME; `package.module:NAME` imports a module.
Anything that cannot be imported raises `InputError` naming the SPEC and the user's line.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..text import raised_at

def load_spec(spec: str) -> Any:
    """The object named by `path/to/file.py:NAME` or `package.module:NAME`."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name or not name.isidentifier():
        raise InputError(f"SPEC {spec!r}: expected path/to/file.py:NAME or package.module:NAME")
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _import_file(Path(target), spec)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            if exc.name and target.startswith(exc.name):
                raise InputError(f"SPEC {spec}: no module named {target!r}") from exc
            raise InputError(f"SPEC {spec}: importing {target} failed: {raised_at(exc)}") from exc
        except Exception as exc:  # noqa: BLE001 - the user's module raised while importing
            raise InputError(f"SPEC {spec}: importing {target} failed: {raised_at(exc)}") from exc
    if not hasattr(module, name):
        raise InputError(f"SPEC {spec}: {target} has no attribute {name!r}")
    return getattr(module, name)


def _import_file(path: Path, spec: str):
    if not path.is_file():
        raise InputError(f"SPEC {spec}: no such file {path}")
    mod_name = f"_loradoctor_user_{abs(hash(str(path.resolve())))}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(module_spec)
    # The user's file may import its neighbours (`from model_lora import LoRA`), as it does
    # when run from its own folder.
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    sys.modules[mod_name] = module
    # Importing must not write __pycache__ into the user's folder.
    saved_bytecode_flag, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001
        sys.modules.pop(mod_name, None)
        raise InputError(f"SPEC {spec}: importing {path} failed: {raised_at(exc)}") from exc
    finally:
        sys.dont_write_bytecode = saved_bytecode_flag
        if sys.path and sys.path[0] == folder:
            sys.path.pop(0)
    return module


def parse_kwargs(pairs: list[str] | None, flag: str = "--apply-arg") -> dict[str, Any]:
    """`KEY=VALUE` pairs; VALUE is a Python literal where it parses as one, else a string."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise InputError(f"{flag} {pair!r}: expected KEY=VALUE")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out[key.strip()] = value
    return out


def split_pairs(text: str) -> list[str]:
    """`a=1,b=x,y` -> ["a=1", "b=x,y"]: a bare item continues the last value."""
    items: list[str] = []
    for part in text.split(","):
        if "=" in part or not items:
            items.append(part)
        else:
            items[-1] += "," + part
    return items


def parse_peft(text: str) -> dict:
    """`r=8,lora_alpha=16,target_modules=q_proj,v_proj`: a bare item continues the last value."""
    return parse_kwargs(split_pairs(text), "--peft")


def peft_kwargs(peft: Any) -> dict | None:
    """PEFT's LoRA settings as keyword arguments: from `r=8,lora_alpha=16,...`, a dict, or a
    `peft.LoraConfig` (its LoRA fields); None without PEFT."""
    if peft is None:
        return None
    if isinstance(peft, str):
        return parse_peft(peft)
    if isinstance(peft, dict):
        return dict(peft)
    to_dict = getattr(peft, "to_dict", None)  # a peft.LoraConfig
    if callable(to_dict):
        keys = ("r", "lora_alpha", "target_modules", "lora_dropout", "bias", "use_rslora",
                "modules_to_save", "layers_to_transform", "init_lora_weights", "use_dora")
        d = to_dict()
        out = {k: d[k] for k in keys if k in d and d[k] is not None}
        if isinstance(out.get("target_modules"), set):
            out["target_modules"] = sorted(out["target_modules"])
        return out
    raise InputError(f"peft: expected a LoraConfig, a dict or 'r=8,lora_alpha=16,...', got "
                     f"{type(peft).__name__}")
