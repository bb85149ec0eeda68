"""The (A, B) pairs a saved adapter file holds, by the layer the base model names.

PEFT-style keys (`X.lora_A.weight` / `X.lora_B.weight`, with or without the adapter name) and
hand-written ones (`X.lora.A.weight`, `X.A`, `lora_down`); a wrapper's prefix (`module.` from
DDP, `_orig_mod.` from `torch.compile`, PEFT's `base_model.model.`) is removed from the layer's
name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..layer_names import PEFT_PREFIX

# Prefixes a wrapper adds to every key of the state dict it hands out.
WRAPPER_PREFIXES = {
    "module.": "a DistributedDataParallel / DataParallel wrapper (the state dict was taken from "
               "the wrapped model)",
    "_orig_mod.": "torch.compile (the state dict was taken from the compiled module)",
}
_FACTOR = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|"
                     r"lora_magnitude_vector)(?:\.(?P<adapter>[^.]+))?(?:\.weight)?$")


@dataclass
class SavedPair:
    """One adapted layer's factors as saved."""

    module: str          # the layer as the base model names it (prefixes removed)
    key_A: str | None
    key_B: str | None
    A: Any = None        # torch.Tensor (r, in)
    B: Any = None        # torch.Tensor (out, r)


def canonical_module(key_module: str) -> str:
    """A saved module path as the base model names it: wrapper and PEFT prefixes removed."""
    name = key_module
    changed = True
    while changed:
        changed = False
        for prefix in (*WRAPPER_PREFIXES, PEFT_PREFIX):
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
        if "._orig_mod." in name:
            name, changed = name.replace("._orig_mod.", "."), True
    return name


def saved_pairs(tensors: dict[str, Any]) -> list[SavedPair]:
    """The (A, B) pairs of a PEFT-style file (`X.lora_A.weight` / `X.lora_B.weight`, with or
    without the adapter name), or of a hand-written one (`X.lora.A.weight`, `X.A`, `lora_down`)."""
    by_module: dict[str, SavedPair] = {}
    for key, t in tensors.items():
        module, side = split_factor(key)
        if module is None:
            continue
        pair = by_module.setdefault(module, SavedPair(canonical_module(module), None, None))
        if side == "A":
            pair.key_A, pair.A = key, t
        else:
            pair.key_B, pair.B = key, t
    return list(by_module.values())


_HAND_A = re.compile(r"^(?P<module>.+?)\.(?:lora\.)?(?:A|lora_down|down|lora_a)(?:\.weight)?$")
_HAND_B = re.compile(r"^(?P<module>.+?)\.(?:lora\.)?(?:B|lora_up|up|lora_b)(?:\.weight)?$")


def split_factor(key: str) -> tuple[str | None, str | None]:
    m = _FACTOR.match(key)
    if m and m.group("part") in ("lora_A", "lora_embedding_A"):
        return m.group("module"), "A"
    if m and m.group("part") in ("lora_B", "lora_embedding_B"):
        return m.group("module"), "B"
    for pattern, side in ((_HAND_A, "A"), (_HAND_B, "B")):
        m = pattern.match(key)
        if m:
            return m.group("module"), side
    return None, None
