"""`torch.load` in the user's code: the calls that unpickle without `weights_only=True`, and
whether this torch does it by default (LD501's warning about loading a checkpoint).
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import torch


def torch_version() -> str:
    return str(torch.__version__).split("+")[0]


def weights_only_by_default() -> bool:
    """torch.load unpickles only tensors and plain containers by default since torch 2.6."""
    return torch.torch_version.TorchVersion(torch_version()) >= "2.6"


def unsafe_torch_loads(ctx) -> list[dict[str, Any]]:
    """`torch.load(...)` calls without `weights_only=True` in the user's apply module."""
    fn = ctx.apply_fn
    try:
        path = inspect.getsourcefile(fn) if fn is not None else None
    except TypeError:
        path = None
    if not path or not Path(path).is_file():
        return []
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
        return []
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        is_load = (isinstance(f, ast.Attribute) and f.attr == "load"
                   and isinstance(f.value, ast.Name) and f.value.id == "torch")
        if not is_load:
            continue
        wo = next((k for k in node.keywords if k.arg == "weights_only"), None)
        if wo is not None and isinstance(wo.value, ast.Constant) and wo.value.value is True:
            continue
        explicit = wo is not None and isinstance(wo.value, ast.Constant) and wo.value.value is False
        found.append({"file": path, "line": node.lineno, "explicit_false": explicit,
                      "code": ast.get_source_segment(Path(path).read_text(encoding="utf-8"), node)})
    return found
