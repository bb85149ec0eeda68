"""The saved keys against the keys the loading code expects, and what explains those that
match nothing: a wrapper's prefix, a `base_model.model.` too many or too few, renamed layers;
with the fix for each.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from ..layer_names import PEFT_PREFIX
from .factors import WRAPPER_PREFIXES, split_factor


@dataclass
class KeyPattern:
    """Saved keys that match nothing, explained by one transformation (or not at all)."""

    kind: str                # wrapper-prefix | prefix-too-many | prefix-too-few | renamed
    prefix: str = ""         # the prefix added or missing
    cause: str = ""
    keys: list[str] = field(default_factory=list)       # saved keys it covers
    closest: dict[str, str] = field(default_factory=dict)  # renamed: saved key -> nearest expected


@dataclass
class KeyMatch:
    saved: int
    expected: int
    matched: list[str]                       # saved keys used as they are
    patterns: list[KeyPattern]
    missing: list[str]                       # expected keys with no saved tensor, after fixes
    fixed: dict[str, str] = field(default_factory=dict)   # saved key -> expected key

    @property
    def unmatched(self) -> int:
        return sum(len(p.keys) for p in self.patterns)


_ADAPTER_NAME = re.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|"
                           r"lora_magnitude_vector)\.default(?=\.|$)")


def without_adapter_name(key: str) -> str:
    """PEFT's key for a raw state-dict key: `lora_A.default.weight` -> `lora_A.weight` (PEFT
    strips the adapter name itself when loading, so keeping it is not a fault)."""
    return _ADAPTER_NAME.sub(r".\1", key)


def match_keys(saved: list[str], expected: list[str]) -> KeyMatch:
    """Which saved keys the loading code uses, and what explains the others.

    `fixed` maps every saved key that reaches an expected key (as it is, or put right) to that
    key; `matched` holds the ones the loading code uses as they are.
    """
    exp = set(expected)
    fixed: dict[str, str] = {}
    matched = []
    for k in saved:
        target = k if k in exp else without_adapter_name(k)
        if target in exp:
            matched.append(k)
            fixed[k] = target
    rest = [k for k in saved if k not in fixed]
    patterns: dict[tuple[str, str], KeyPattern] = {}
    for key in rest:
        target, kind, prefix = _explain_key(without_adapter_name(key), exp)
        if target is None:
            continue
        fixed[key] = target
        p = patterns.setdefault((kind, prefix), KeyPattern(kind, prefix, _cause(kind, prefix)))
        p.keys.append(key)
    renamed = [k for k in rest if k not in fixed]
    if renamed:
        p = KeyPattern("renamed", cause="layer names that the base model does not have")
        unused = sorted(exp - set(fixed.values()))
        for key in renamed:
            p.keys.append(key)
            near = difflib.get_close_matches(key, unused or sorted(exp), n=1, cutoff=0.3)
            if near:
                p.closest[key] = near[0]
        patterns[("renamed", "")] = p
    return KeyMatch(len(saved), len(expected), matched, list(patterns.values()),
                    sorted(exp - set(fixed.values())), fixed)


def _explain_key(key: str, expected: set[str]) -> tuple[str | None, str, str]:
    """(the expected key it was meant to be, kind, prefix) or (None, "", "")."""
    # Wrapper prefixes, possibly several (DDP around a compiled model), possibly inside.
    name, stripped = key, ""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped, changed = name[len(prefix):], stripped + prefix, True
        if "._orig_mod." in name:
            name, stripped, changed = name.replace("._orig_mod.", "."), stripped or "_orig_mod.", \
                True
    if stripped and name in expected:
        return name, "wrapper-prefix", stripped
    base = name
    if base.startswith(PEFT_PREFIX) and base[len(PEFT_PREFIX):] in expected:
        kind = "wrapper-prefix" if stripped else "prefix-too-many"
        return base[len(PEFT_PREFIX):], kind, stripped + PEFT_PREFIX if stripped else PEFT_PREFIX
    # A prefix missing (the key is the tail of exactly one expected key) or one too many (an
    # expected key is the tail of this one).
    shorter = [e for e in expected if e.endswith("." + base)]
    if len(shorter) == 1:
        return shorter[0], "prefix-too-few", shorter[0][: -len(base)]
    longer = [e for e in expected if base.endswith("." + e)]
    if len(longer) == 1:
        return longer[0], "wrapper-prefix" if stripped else "prefix-too-many", \
            stripped + base[: -len(longer[0])]
    return None, "", ""


def _cause(kind: str, prefix: str) -> str:
    if kind == "wrapper-prefix":
        first = next((p for p in WRAPPER_PREFIXES if prefix.startswith(p)), prefix)
        return WRAPPER_PREFIXES.get(first, "a wrapper around the model")
    if kind == "prefix-too-many":
        return f"saved from a model wrapped once more than the one loading it ({prefix!r} extra)"
    if kind == "prefix-too-few":
        return f"saved from the inner model ({prefix!r} missing)"
    return ""


def key_fix(p: KeyPattern) -> str:
    if p.kind == "wrapper-prefix":
        return (f"save the unwrapped model (model.module / model._orig_mod), or strip the "
                f"prefix: {{k.removeprefix({p.prefix!r}): v for k, v in state.items()}}")
    if p.kind == "prefix-too-many":
        return f"strip the prefix: {{k.removeprefix({p.prefix!r}): v for k, v in state.items()}}"
    if p.kind == "prefix-too-few":
        return f"add the prefix: {{{p.prefix!r} + k: v for k, v in state.items()}}"
    return "save with the module names of the model that loads the adapter (or rename the keys)"


def saved_keys(art) -> list[str]:
    """The keys the loading code is meant to use: all of a PEFT file, the factors of a user's."""
    if art.kind == "peft":
        return list(art.tensors)
    return [k for k in art.tensors if split_factor(k)[0] is not None]
