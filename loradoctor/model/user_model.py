"""The user's own model code (`--model file.py:NAME` with `--model-arg KEY=VALUE`), built.

Hand-written LoRA is most common where the model is hand-written too (MiniMind, nanoGPT-style
GPTs, course code), and transformers' Auto classes know none of them. NAME may be:

- a function that returns the model: called as `fn(**args)`;
- a `PreTrainedModel` subclass: `from_pretrained(path)` when the args hold `path=DIR` (the
  other args go to `from_pretrained`), else built from its own config class with the args;
- any other `nn.Module` class: constructed with the args. A class that takes one `config`
  (nanoGPT's `GPT(config)`) gets its config built from the args: the class its annotation
  names, else `NAMEConfig`, else the one `...Config` class beside it in the module.

The code is imported as `--apply` code is (`inputs.specs.load_spec`: explicit and local); nothing
runs with `trust_remote_code`, nothing is fetched. Construction runs under a fixed seed with
the caller's RNG states put back, so a model built from random weights is the same each run.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..text import raised_at
from ..inputs.specs import load_spec

_SPEC = re.compile(r"^(?P<target>.+):(?P<name>[A-Za-z_]\w*)$")


def is_spec(value: Any) -> bool:
    """A `file.py:NAME` / `pkg.mod:NAME` string rather than a model directory."""
    if not isinstance(value, str) or Path(value).is_dir():
        return False
    m = _SPEC.match(value)
    if not m:
        return False
    target = m["target"]
    return target.endswith(".py") or "/" in target or "\\" in target or \
        all(part.isidentifier() for part in target.split("."))


def build(spec: str, args: dict[str, Any] | None, device: str = "cpu", seed: int = 0):
    """The model SPEC names, built with `args`, on `device`, in eval mode."""
    from torch import nn

    from .safety import rng_preserved

    obj = load_spec(spec)
    args = dict(args or {})
    with rng_preserved(seed):
        model = _build(obj, args, spec)
    if not isinstance(model, nn.Module):
        raise InputError(f"--model {spec}: returned {type(model).__name__}, expected an "
                         f"nn.Module (the causal LM)")
    if not any(True for _ in model.parameters()):
        raise InputError(f"--model {spec}: the model has no parameters")
    try:
        model = model.to(device)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"--model {spec}: moving it to {device} raised {raised_at(exc)}") from exc
    return model.eval()


def _build(obj, args: dict, spec: str):
    from torch import nn

    if inspect.isclass(obj) and _is_pretrained(obj):
        return _pretrained(obj, args, spec)
    if inspect.isclass(obj) and issubclass(obj, nn.Module):
        return _construct(obj, args, spec)
    if callable(obj) and not inspect.isclass(obj):
        _bind(obj, args, spec, "function")
        return _run(lambda: obj(**args), spec)
    what = "a class that is not an nn.Module" if inspect.isclass(obj) else \
        f"a {type(obj).__name__}"
    raise InputError(f"--model {spec}: {getattr(obj, '__name__', type(obj).__name__)} is {what};"
                     f" expected a function returning the model, a PreTrainedModel subclass or "
                     f"an nn.Module class")


def _is_pretrained(cls) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return issubclass(cls, PreTrainedModel)


def _pretrained(cls, args: dict, spec: str):
    import torch

    args = dict(args)
    path = args.pop("path", None) or args.pop("pretrained_model_name_or_path", None)
    if path is not None:
        from ..inputs.pretrained import local_dir
        d = local_dir(path, "--model-arg path")
        if not (d / "config.json").exists():
            raise InputError(f"--model-arg path={path}: no config.json, not a directory saved "
                             f"with save_pretrained")
        args.setdefault("dtype", torch.float32)
        return _run(lambda: cls.from_pretrained(str(d), local_files_only=True, **args), spec)
    config_cls = getattr(cls, "config_class", None)
    if config_cls is None:
        raise InputError(f"--model {spec}: {cls.__name__} has no config_class; pass "
                         f"--model-arg path=DIR to load a saved model")
    config = _run(lambda: config_cls(**args), spec)
    return _run(lambda: cls(config), spec)


def _construct(cls, args: dict, spec: str):
    params = _params(cls.__init__)
    names = [n for n in params if n != "self"]
    if names == ["config"] and "config" not in args:
        config_cls = _config_class(cls, params["config"])
        if config_cls is not None:
            config = _run(lambda: config_cls(**args), spec)
            return _run(lambda: cls(config), spec)
    _bind(cls, args, spec, "class")
    return _run(lambda: cls(**args), spec)


def _config_class(cls, param):
    """The config class a `Model(config)` takes: annotated, `NAMEConfig`, or the module's one."""
    import sys

    ann = param.annotation
    if inspect.isclass(ann) and ann is not param.empty:
        return ann
    module = sys.modules.get(cls.__module__)
    found = {n: v for n, v in vars(module).items()
             if inspect.isclass(v) and n.endswith("Config") and v.__module__ == cls.__module__} \
        if module is not None else {}
    if isinstance(ann, str) and ann in found:
        return found[ann]
    base = re.sub(r"(ForCausalLM|LMHeadModel|LM|Model)$", "", cls.__name__)
    for name in (f"{cls.__name__}Config", f"{base}Config"):
        if name in found:
            return found[name]
    return next(iter(found.values())) if len(found) == 1 else None


def _params(fn) -> dict:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return {}


def _bind(fn, args: dict, spec: str, what: str) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(**args)
    except TypeError as exc:
        takes = ", ".join(n for n in sig.parameters if n != "self") or "nothing"
        raise InputError(f"--model {spec}: {exc} (the {what} takes: {takes}; pass them with "
                         f"--model-arg KEY=VALUE)") from None


def _run(make, spec: str):
    try:
        return make()
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code raised while building
        raise InputError(f"--model {spec} raised {raised_at(exc)}") from exc
