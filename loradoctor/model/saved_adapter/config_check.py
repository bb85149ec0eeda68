"""A saved PEFT adapter against its adapter_config.json and the base: ranks, shapes, dtypes,
lora_alpha and DoRA (LD513).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .effect import Effect
from .factors import saved_pairs
from .files import Artifact


@dataclass
class ConfigProblem:
    kind: str        # rank | shape | dtype | alpha | dora
    message: str
    location: str | None = None
    evidence: dict = field(default_factory=dict)
    severity: str = "error"  # mixed A/B dtypes: "warning" (PEFT casts them on load)


def config_problems(art: Artifact, eff: Effect) -> list[ConfigProblem]:
    """Shapes, ranks, dtypes and targets of the file against adapter_config.json and the base."""
    import torch

    out: list[ConfigProblem] = []
    cfg = art.config or {}
    r = cfg.get("r")
    rank_pattern = cfg.get("rank_pattern") or {}
    pairs = saved_pairs(art.tensors)
    for p in pairs:
        for side, t in (("A", p.A), ("B", p.B)):
            if t is not None and not torch.is_floating_point(t):
                out.append(ConfigProblem("dtype", f"{p.module}'s lora_{side} is stored as "
                                         f"{str(t.dtype).replace('torch.', '')}, not a floating "
                                         f"point type", p.module, {"dtype": str(t.dtype)}))
        if p.A is not None and p.B is not None and p.A.dtype != p.B.dtype:
            out.append(ConfigProblem("mixed-dtype", f"{p.module}'s lora_A is "
                                     f"{str(p.A.dtype).replace('torch.', '')} and lora_B "
                                     f"{str(p.B.dtype).replace('torch.', '')}", p.module,
                                     {"A": str(p.A.dtype), "B": str(p.B.dtype)}, "warning"))
        if art.kind != "peft" or p.A is None or p.B is None:
            continue
        want_r = _pattern_value(rank_pattern, p.module, r)
        got_r = int(p.A.shape[0]) if p.A.dim() == 2 else None
        if want_r is not None and p.A.dim() == 2 and (got_r != want_r or p.B.shape[-1] != want_r):
            out.append(ConfigProblem(
                "rank", f"{p.module} is saved with rank {got_r} (lora_A {tuple(p.A.shape)}, "
                f"lora_B {tuple(p.B.shape)}) but adapter_config.json says r={want_r}",
                p.module, {"saved_rank": got_r, "config_r": want_r,
                           "A": list(p.A.shape), "B": list(p.B.shape)}))
            continue
        shape = eff.module_shapes.get(p.module)
        if shape is not None and p.A.dim() == 2 and p.B.dim() == 2 and not (
                p.A.shape[1] == shape[1] and p.B.shape[0] == shape[0]) and \
                ".lora_embedding" not in (p.key_A or ""):
            out.append(ConfigProblem(
                "shape", f"{p.module} is {shape[0]} x {shape[1]} in the base, but the saved "
                f"factors are lora_A {tuple(p.A.shape)} and lora_B {tuple(p.B.shape)}",
                p.module, {"base": list(shape), "A": list(p.A.shape), "B": list(p.B.shape)}))
    if art.kind != "peft":
        return out
    alpha = cfg.get("lora_alpha")
    if alpha is not None and isinstance(alpha, (int, float)) and alpha == 0:
        out.append(ConfigProblem("alpha", "lora_alpha is 0 in adapter_config.json: the update "
                                 "is scaled by 0 and the adapter changes nothing", None,
                                 {"lora_alpha": alpha}))
    dora_saved = any("lora_magnitude_vector" in k for k in art.tensors)
    if dora_saved != bool(cfg.get("use_dora")):
        out.append(ConfigProblem(
            "dora", "the file holds DoRA magnitude vectors but use_dora is false" if dora_saved
            else "use_dora is true but the file holds no DoRA magnitude vector", None,
            {"use_dora": cfg.get("use_dora"), "magnitude_vectors_saved": dora_saved}))
    return out


def _pattern_value(pattern: dict, module: str, default):
    for key, value in pattern.items():
        if module == key or module.endswith("." + key) or re.fullmatch(key, module):
            return value
    return default
