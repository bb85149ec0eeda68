"""Which entries of a PEFT config match a module of the model, with PEFT's own matching rules.

PEFT raises only when *no* `target_modules` entry matches: `["q_proj", "v_prj"]` silently
adapts `q_proj` alone, `modules_to_save=["lm_haed"]` silently trains and saves nothing extra,
`layers_to_transform=[0, 1, 40]` on a 30-layer model silently drops 40. Here each entry is
matched on its own against the model's module names as PEFT saw them (before it wrapped
anything), exactly as PEFT matches:

- `target_modules` list: a name equal to the entry or ending in `.entry`;
- `target_modules` string: a regex `re.fullmatch`ed against each name; each alternative of a
  `(a|b)` group or of the top level is tried on its own, so one dead alternative is found;
- `modules_to_save`: a name ending in the entry (PEFT's plain `str.endswith`);
- `layers_to_transform`: the layer index PEFT reads from a matched name (the first number after
  `layers_pattern`, else after any part), among the names the target entries match;
- `layers_pattern`: a name holding `pattern.<index>.`.

The closest real names (difflib) come with each entry that matches nothing.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from .layer_names import layer_ranges

# Children PEFT adds under a layer it wraps: not names the user's config could have meant.
INTERNAL = {"base_layer", "lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B",
            "lora_dropout", "lora_magnitude_vector", "lora_variant", "original_module",
            "modules_to_save"}
# modules_to_save entries PEFT adds itself for some task types, whichever of them exists.
AUTO_MODULES_TO_SAVE = {"SEQ_CLS": {"classifier", "score"}, "TOKEN_CLS": {"classifier", "score"},
                        "QUESTION_ANS": {"qa_outputs"}}
CLOSEST = 3


@dataclass
class Unmatched:
    """One config entry that matches no module."""

    field: str  # target_modules | modules_to_save | layers_to_transform | layers_pattern
    entry: Any                 # the entry as written (a name, a regex alternative, a layer index)
    adapter: str               # PEFT adapter name ("default")
    pattern: str | None = None  # the whole regex, when the entry is one of its alternatives
    closest: list[str] = field(default_factory=list)


@dataclass
class TargetCheck:
    """Every checked entry of every PEFT config found, and those that match nothing."""

    source: str                                 # where the config came from
    checked: dict[str, int] = field(default_factory=dict)   # field -> entries checked
    unmatched: list[Unmatched] = field(default_factory=list)
    matched: dict[str, list[str]] = field(default_factory=dict)  # adapter -> targeted names
    layers: list[int] = field(default_factory=list)         # layer indexes the targets reach


def live_configs(model) -> dict[str, Any]:
    """`{adapter: config}` from a PeftModel, or from a model PEFT injected adapters into."""
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict):
        return {}
    return {k: v for k, v in configs.items() if hasattr(v, "target_modules")}


def base_of(model):
    """The model PEFT wrapped (`PeftModel.get_base_model()`), or the model itself."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def original_names(model) -> list[str]:
    """Module names as PEFT matched them: the wrappers' own children left out."""
    return [n for n, _ in model.named_modules()
            if n and not any(part in INTERNAL for part in n.split("."))]


def weight_names(model) -> list[str]:
    """The names among `original_names` of modules holding weights of their own (the layers a
    config can mean): the pool the closest names are drawn from."""
    keep = set(original_names(model))
    out = []
    for n, m in model.named_modules():
        own = any(True for _ in m.parameters(recurse=False))
        if n in keep and (own or hasattr(m, "base_layer") or hasattr(m, "original_module")):
            out.append(n)
    return out


def config_fields(config: Any) -> dict[str, Any]:
    """The four fields that select modules, from a LoraConfig or a plain dict (`--peft`)."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    target = get("target_modules")
    if isinstance(target, str) and target != "all-linear" and "," in target \
            and not _looks_like_regex(target):
        target = [t.strip() for t in target.split(",") if t.strip()]  # how --peft passes a list
    task = get("task_type")
    return {"target_modules": target, "modules_to_save": get("modules_to_save"),
            "layers_to_transform": get("layers_to_transform"),
            "layers_pattern": get("layers_pattern"),
            "task_type": getattr(task, "value", task)}


def check_configs(configs: dict[str, Any], names: list[str], source: str,
                  pool: list[str] | None = None) -> TargetCheck:
    """Match every entry of every config in `configs` ({adapter: config}) against `names`;
    the closest names offered come from `pool` (default: `names`)."""
    out = TargetCheck(source)
    pool = pool or names
    for adapter, config in configs.items():
        f = config_fields(config)
        targeted = _check_targets(f["target_modules"], names, adapter, out, pool)
        out.matched[adapter] = targeted
        _check_modules_to_save(f["modules_to_save"], f["task_type"], names, adapter, out, pool)
        if isinstance(f["target_modules"], (list, tuple, set)):
            _check_layers(f["layers_to_transform"], f["layers_pattern"], targeted, names,
                          adapter, out)
    return out


def _count(out: TargetCheck, name: str, n: int = 1) -> None:
    out.checked[name] = out.checked.get(name, 0) + n


def _check_targets(target, names, adapter, out, pool) -> list[str]:
    if target is None or target == "all-linear":
        return []
    if isinstance(target, str):
        regex_hits = [n for n in names if _fullmatch(target, n)]
        for alt, variant in _alternatives(target):
            _count(out, "target_modules")
            if not any(_fullmatch(variant, n) for n in names):
                out.unmatched.append(Unmatched("target_modules", alt, adapter, pattern=target,
                                               closest=closest(alt, pool)))
        return regex_hits
    hits: list[str] = []
    for entry in sorted(map(str, target)):
        _count(out, "target_modules")
        found = [n for n in names if n == entry or n.endswith("." + entry)]
        if not found:
            out.unmatched.append(Unmatched("target_modules", entry, adapter,
                                           closest=closest(entry, pool)))
        hits.extend(found)
    return sorted(set(hits))


def _check_modules_to_save(modules, task_type, names, adapter, out, pool) -> None:
    if not modules:
        return
    auto = AUTO_MODULES_TO_SAVE.get(str(task_type), set())
    for entry in modules:
        entry = str(entry)
        if entry in auto:
            continue  # PEFT adds these itself and expects only one of them to exist
        _count(out, "modules_to_save")
        if not any(n.endswith(entry) for n in names):
            out.unmatched.append(Unmatched("modules_to_save", entry, adapter,
                                           closest=closest(entry, pool)))


def _check_layers(indexes, patterns, targeted, names, adapter, out) -> None:
    if isinstance(patterns, str):
        patterns = [patterns]
    for pattern in patterns or []:
        _count(out, "layers_pattern")
        if not any(re.match(rf"(?:^|.*?\.){pattern}\.\d+\.", n + ".") for n in names):
            out.unmatched.append(Unmatched("layers_pattern", pattern, adapter,
                                           closest=closest(pattern, names)))
    if indexes is None or (isinstance(indexes, (list, tuple)) and not indexes):
        return
    present = sorted({i for n in targeted if (i := layer_index(n, patterns)) is not None})
    out.layers = present
    for index in [indexes] if isinstance(indexes, int) else list(indexes):
        _count(out, "layers_to_transform")
        if int(index) not in present:
            out.unmatched.append(Unmatched("layers_to_transform", int(index), adapter,
                                           closest=[layer_ranges(present)] if present else []))


def layer_index(name: str, patterns=None) -> int | None:
    """The layer index PEFT reads from a module name (the first numbered part)."""
    if not patterns:
        m = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name + ".")
        return int(m.group("idx")) if m else None
    for pattern in patterns:
        m = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", name + ".")
        if m:
            return int(m.group("idx"))
    return None


# --- regex alternatives ------------------------------------------------------------------


def _looks_like_regex(text: str) -> bool:
    return any(c in text for c in "*+?()[]|\\^$")


def _fullmatch(pattern: str, name: str) -> bool:
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def _tokens(text: str) -> Iterator[tuple[int, str, bool]]:
    """(index, token, structural) of a regex: an escape is one two-character token; `(`, `)`
    and `|` outside a character class are structural, everything else is not."""
    i, in_class = 0, False
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            yield i, text[i:i + 2], False
            i += 2
            continue
        if in_class:
            in_class = c != "]"
            yield i, c, False
        else:
            in_class = c == "["
            yield i, c, c in "()|"
        i += 1


def _split_top(text: str) -> list[str]:
    """Split on `|` outside groups and character classes (escapes respected)."""
    parts, depth, cur = [], 0, ""
    for _, token, structural in _tokens(text):
        if structural and token == "|" and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        if structural:
            depth += {"(": 1, ")": -1}.get(token, 0)
        cur += token
    parts.append(cur)
    return parts


def _innermost_groups(text: str) -> list[tuple[int, int]]:
    """(start, end) of every group `( ... )` holding no other group (end: index of `)`)."""
    out, stack = [], []
    for i, token, structural in _tokens(text):
        if structural and token == "(":
            stack.append([i, True])
        elif structural and token == ")" and stack:
            start, innermost = stack.pop()
            if innermost:
                out.append((start, i))
            if stack:
                stack[-1][1] = False
    return out


def _alternatives(pattern: str) -> list[tuple[str, str]]:
    """(alternative as written, a regex keeping only that alternative) for each alternative.

    Top-level alternatives, and within each the alternatives of every innermost `( | )` group;
    a pattern without alternation is one entry, itself.
    """
    out = []
    for top in _split_top(pattern):
        groups = []
        for start, end in _innermost_groups(top):
            body = top[start + 1:end]
            prefix = re.match(r"\?(?:[:=!]|P<\w+>)", body)
            inner = body[prefix.end():] if prefix else body
            alts = _split_top(inner)
            if len(alts) > 1:
                groups.append((start, end, alts))
        if not groups:
            out.append((top, top))
            continue
        for start, end, alts in groups:
            for alt in alts:
                out.append((alt, top[:start] + f"(?:{alt})" + top[end + 1:]))
    return out


# --- closest names -----------------------------------------------------------------------


def closest(entry: Any, names: list[str], n: int = CLOSEST) -> list[str]:
    """The real module names (as many dotted parts as the entry has) nearest the entry."""
    text = str(entry)
    text = re.sub(r"\\d[+*]?|\[0-9\][+*]?", "0", text)  # a layer-number class reads as a number
    text = re.sub(r"\.\*|\.\+|\^|\$|\(\?:|[()?]", "", text).replace("\\.", ".").strip(".")
    depth = text.count(".") + 1
    pool = sorted({".".join(name.split(".")[-depth:]) for name in names})
    return difflib.get_close_matches(text, pool, n=n, cutoff=0.5)


