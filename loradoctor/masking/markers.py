"""Markers in the user's labelling code: token lists it scans `input_ids` for, and the source
that builds them from the tokenizer's special-token attributes.

A dataset instance that keeps `self.bos_id = tokenizer(f"{tokenizer.bos_token}assistant\\n")
.input_ids` exposes its marker; decoding it shows `Noneassistant\\n` when `bos_token` is None.
The source is read with `inspect` and `ast` (never executed again) to find the f-string,
`.format()`, `%` or `str()` that turned a special-token attribute into text.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .oracle import OracleSample

SPECIAL_ATTRS = ("bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token",
                 "mask_token")
MAX_MARKER_TOKENS = 32
LIBRARY_ROOTS = ("torch", "transformers", "datasets", "builtins", "typing", "collections", "abc")


@dataclass
class Marker:
    """A short token list (or string) the user's dataset instance holds, decoded."""

    attribute: str  # "LoRADataset.bos_id"
    text: str
    ids: list[int] | None  # None for a string attribute


@dataclass
class SourceHit:
    """Source that formats a tokenizer special-token attribute into text."""

    attribute: str  # "bos_token"
    location: str  # "minimind_dataset.py:27"
    snippet: str


@dataclass
class NoneMarker:
    """A marker built from a special-token attribute that is None for this tokenizer."""

    attribute: str  # the attribute that is None: "bos_token"
    marker: Marker | None  # the dataset's marker whose text holds the "None" it became
    hit: SourceHit | None  # the source that formats the attribute into text
    template_marker: str  # what the chat template writes there ("?" when it is not known)

    def to_evidence(self) -> dict[str, Any]:
        m, hit = self.marker, self.hit
        return {"attribute": self.attribute, "marker": m.text if m else None,
                "marker_attribute": m.attribute if m else None,
                "source": hit.location if hit else None, "template_marker": self.template_marker}


def none_marker(markers: list[Marker], hits: list[SourceHit], missing: list[str],
                samples_hurt: int, assistant_header: str | None,
                end_of_turn: str | None) -> NoneMarker | None:
    """The marker, or the source, that turned a special token that is None (`missing`) into
    the text `None`, with the template's own marker for it; None when nothing did.

    Token ids that decode to text with "None" in it were made by tokenizing a formatted None;
    a string holding "None" (or source that formats a None attribute) counts only when
    samples actually lose their labels (`samples_hurt`). A formatted `eos_token` stood for the
    end of a turn unless the marker speaks of the assistant."""
    none_markers = [m for m in markers if missing and "None" in m.text
                    and (m.ids is not None or samples_hurt)]
    if not none_markers and not (hits and samples_hurt):
        return None
    hit = hits[0] if hits else None
    attribute = hit.attribute if hit else ("bos_token" if "bos_token" in missing else missing[0])
    marker = none_markers[0] if none_markers else None
    end_like = attribute == "eos_token" and not (marker and "assistant" in marker.text)
    template_marker = (end_of_turn if end_like else assistant_header) or "?"
    return NoneMarker(attribute, marker, hit, template_marker)


def instance_markers(instance: Any, tokenizer) -> list[Marker]:
    """Token lists (1..32 ids) and short strings held by the dataset instance."""
    if instance is None:
        return []
    out = []
    owner = type(instance).__name__
    for name, value in list(getattr(instance, "__dict__", {}).items()):
        ids = _short_ids(value)
        if ids is not None:
            text = tokenizer.decode(ids, skip_special_tokens=False,
                                    clean_up_tokenization_spaces=False)
            out.append(Marker(f"{owner}.{name}", text, ids))
        elif isinstance(value, str) and 0 < len(value) <= 200:
            out.append(Marker(f"{owner}.{name}", value, None))
    return out


def _short_ids(value: Any) -> list[int] | None:
    if hasattr(value, "tolist") and getattr(value, "ndim", 1) <= 1:
        value = value.tolist()
    if isinstance(value, (list, tuple)) and 0 < len(value) <= MAX_MARKER_TOKENS and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    return None


def none_attributes(tokenizer, names: tuple[str, ...] = SPECIAL_ATTRS) -> list[str]:
    """The special-token attributes among `names` that are None for this tokenizer."""
    return [a for a in names if getattr(tokenizer, a, "x") is None]


def none_builders(obj: Any, instance: Any, tokenizer) -> list[SourceHit]:
    """Places in the user's source that format a special-token attribute that is None here."""
    missing = set(none_attributes(tokenizer))
    if not missing:
        return []
    hits: list[SourceHit] = []
    targets = [obj]
    if inspect.isclass(obj):
        targets = [k for k in obj.__mro__ if k is not object
                   and not (k.__module__ or "").split(".")[0] in LIBRARY_ROOTS]
    for target in targets:
        try:
            lines, first = inspect.getsourcelines(target)
            path = Path(inspect.getsourcefile(target) or "?").name
        except (OSError, TypeError):
            continue
        source = textwrap.dedent("".join(lines))
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            for attr in _formatted_attributes(node):
                if attr in missing:
                    line = first + getattr(node, "lineno", 1) - 1
                    snippet = (ast.get_source_segment(source, node) or "").strip()
                    hits.append(SourceHit(attr, f"{path}:{line}", snippet[:120]))
    seen, unique = set(), []
    for h in hits:
        if (h.attribute, h.location) not in seen:
            seen.add((h.attribute, h.location))
            unique.append(h)
    return unique


def _attr_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute) and node.attr in SPECIAL_ATTRS:
        return node.attr
    return None


def _formatted_attributes(node: ast.AST) -> list[str]:
    """Special-token attributes this node turns into text (f-string, .format, %, str())."""
    found = []
    if isinstance(node, ast.JoinedStr):
        found = [_attr_name(v.value) for v in node.values if isinstance(v, ast.FormattedValue)]
    elif isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "format" \
                and isinstance(func.value, ast.Constant) and isinstance(func.value.value, str):
            found = [_attr_name(a) for a in [*node.args, *(k.value for k in node.keywords)]]
        elif isinstance(func, ast.Name) and func.id == "str" and node.args:
            found = [_attr_name(node.args[0])]
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) \
            and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
        right = node.right.elts if isinstance(node.right, ast.Tuple) else [node.right]
        found = [_attr_name(r) for r in right]
    return [a for a in found if a]


def marker_counts(marker: Marker, sample: OracleSample) -> tuple[int, int]:
    """Occurrences of the marker's text in template-written text vs of its ids in the tokens."""
    text, ids = sample.truth.text, marker.ids
    if not marker.text:
        return 0, 0
    contents = [(s, e) for s, e, _ in sample.truth.regions] + \
        [t.content for t in sample.truth.turns if t.content]
    text_n, p = 0, text.find(marker.text)
    while p >= 0:
        if not any(s <= p < e for s, e in contents):
            text_n += 1
        p = text.find(marker.text, p + 1)
    O, m = sample.ids, len(ids)
    token_n = sum(1 for i in range(len(O) - m + 1) if O[i] == ids[0] and O[i:i + m] == ids)
    return text_n, token_n
