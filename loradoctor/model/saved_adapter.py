"""The adapter a run ships (`check-adapter`): what the saved file holds, whether its keys reach
the base model's modules, and what it does to the base model's logits.

Two kinds of artifact:

- a PEFT folder: `adapter_config.json` and `adapter_model.safetensors` (or `adapter_model.bin`,
  read with `torch.load(weights_only=True)`: nothing in it is executed);
- a file the user's own save function wrote, checked with `--apply SPEC`: the apply function
  builds fresh adapters on the base and the load function beside it (`load_lora`,
  `load_adapter`, ...) loads the file into them.

Nothing is fetched from a hub and nothing is written into the adapter folder. The
measurements, computed once per run (`ctx.memo`):

- `artifact(ctx)`: the file's tensors and config, read without executing anything;
- `keys(ctx)`: the saved keys against the keys the loading code expects, and for those that
  match nothing the pattern that explains them (a `module.` prefix from DDP, `_orig_mod.` from
  `torch.compile`, a `base_model.model.` too many or too few, renamed layers);
- `effect(ctx)`: the base model's logits on the probe batch; the adapter loaded exactly as its
  loading code loads it (PEFT's `PeftModel.from_pretrained`, or the user's load function:
  "served"); loaded with its keys put right ("intended"); merged into the base weights; and the
  relative size `||scaling * B @ A|| / ||W||` of each layer's update.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..text import one_line

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# Prefixes a wrapper adds to every key of the state dict it hands out.
WRAPPER_PREFIXES = {
    "module.": "a DistributedDataParallel / DataParallel wrapper (the state dict was taken from "
               "the wrapped model)",
    "_orig_mod.": "torch.compile (the state dict was taken from the compiled module)",
}
PEFT_PREFIX = "base_model.model."
_FACTOR = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|"
                     r"lora_magnitude_vector)(?:\.(?P<adapter>[^.]+))?(?:\.weight)?$")
MAX_KEYS_LISTED = 20


# --- what the file holds -----------------------------------------------------------------


@dataclass
class Artifact:
    """The saved adapter as read from disk (tensors on the CPU, as stored)."""

    path: Path
    kind: str                         # "peft" | "user"
    file: Path                        # the weights file read
    tensors: dict[str, Any]           # key -> torch.Tensor
    config: dict | None = None        # adapter_config.json (PEFT)
    load_fn: Any = None               # the user's load function (kind "user")
    save_name: str | None = None


def load_artifact(path: Path, apply_fn=None, apply_spec: str | None = None) -> Artifact:
    """Read the artifact at `path` (InputError when it cannot be read)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"adapter {path}: no such file or directory")
    if apply_fn is not None:
        load_fn, save_name = _user_load(apply_fn, apply_spec)
        file = path
        if path.is_dir():
            found = [path / f for f in WEIGHT_FILES if (path / f).is_file()]
            file = found[0] if found else path
        tensors = read_tensors(file) if file.is_file() else {}
        return Artifact(path, "user", file, tensors, None, load_fn, save_name)
    if not path.is_dir():
        raise InputError(f"adapter {path}: a single file is checked with --apply SPEC (your apply "
                         f"function, with the load function beside it); a PEFT adapter is a "
                         f"folder with {CONFIG_FILE}")
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise InputError(f"adapter {path}: no {CONFIG_FILE}, not a PEFT adapter folder (for a "
                         f"file your own save function wrote, pass --apply SPEC)")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{cfg_path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise InputError(f"{cfg_path}: expected a JSON object")
    files = [path / f for f in WEIGHT_FILES if (path / f).is_file()]
    if not files:
        raise InputError(f"adapter {path}: neither {' nor '.join(WEIGHT_FILES)} is there")
    tensors = read_tensors(files[0])
    if not tensors:
        raise InputError(f"{files[0]}: holds no tensor")
    return Artifact(path, "peft", files[0], tensors, config)


def read_tensors(file: Path) -> dict[str, Any]:
    """Tensors from safetensors, or from a pickle with `weights_only=True` (nothing executed)."""
    import torch

    if file.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return dict(load_file(str(file)))
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
            raise InputError(f"{file}: cannot be read as safetensors: {_error(exc)}") from exc
    try:
        obj = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{file}: cannot be loaded with torch.load(weights_only=True) "
                         f"({_error(exc)}); loradoctor never unpickles objects beyond "
                         f"tensors") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # a checkpoint dict around the state
    if not isinstance(obj, dict):
        raise InputError(f"{file}: holds a {type(obj).__name__}, not a dict of tensors")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _user_load(apply_fn, spec):
    from .measurements import SAVE_LOAD_NAMES, _takes_two
    glb = getattr(apply_fn, "__globals__", None) or {}
    for save_name, load_name in SAVE_LOAD_NAMES:
        fn = glb.get(load_name)
        if callable(fn) and _takes_two(fn):
            return fn, save_name
    names = ", ".join(n for _, n in SAVE_LOAD_NAMES)
    raise InputError(f"--apply {spec}: no load function beside it ({names}, taking (model, "
                     f"path)), so the saved file cannot be loaded the way your code loads it")


def _error(exc: BaseException) -> str:
    """The exception in one line; for a state-dict size error, with its first mismatch."""
    return one_line(exc, "size mismatch")


# --- factors in the file -----------------------------------------------------------------


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
        module, side = _split_factor(key)
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


def _split_factor(key: str) -> tuple[str | None, str | None]:
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


# --- keys --------------------------------------------------------------------------------


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


# --- the measurements --------------------------------------------------------------------


@dataclass
class LayerUpdate:
    module: str
    rank: int
    scaling: float
    relative: float     # ||scaling * B @ A||_F / ||W||_F


@dataclass
class Effect:
    """What the adapter does to the base model on the probe batch."""

    base_max_abs: float = 0.0
    served_diff: float | None = None      # max |served - base| logits
    intended_diff: float | None = None    # with the keys put right (None: same as served)
    merged_diff: float | None = None      # max |merged - unmerged| logits
    load_error: str | None = None         # the loading code raised
    load_warnings: list[str] = field(default_factory=list)
    merge_error: str | None = None
    restored: int | None = None           # adapters the loading code changed from their init
    adapters: int = 0                     # adapters the loading code built
    expected_keys: list[str] = field(default_factory=list)
    keys: KeyMatch | None = None          # the saved keys against expected_keys
    target_names: list[str] = field(default_factory=list)   # base module names (for configs)
    module_shapes: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (out, in)
    updates: list[LayerUpdate] = field(default_factory=list)
    identity_rtol: float = 1e-4
    merge_rtol: float = 1e-3
    notes: list[str] = field(default_factory=list)


def artifact(ctx) -> Artifact:
    return ctx.memo("artifact", lambda: load_artifact(ctx.adapter_dir, ctx.apply_fn,
                                                      ctx.apply_spec))


def effect(ctx) -> Effect:
    return ctx.memo("artifact_effect", lambda: _effect(ctx))


def keys(ctx) -> KeyMatch:
    eff = effect(ctx)
    if eff.keys is None:
        eff.keys = match_keys(_saved_keys(artifact(ctx)), eff.expected_keys)
    return eff.keys


def _saved_keys(art: Artifact) -> list[str]:
    """The keys the loading code is meant to use: all of a PEFT file, the factors of a user's."""
    if art.kind == "peft":
        return list(art.tensors)
    return [k for k in art.tensors if _split_factor(k)[0] is not None]


def _logits(model, probe, conv=None):
    """(B, T, V) logits, the model called as its convention says (`model.convention`)."""
    import torch

    from .convention import HF, logits
    with torch.no_grad():
        return logits(model, probe, conv or HF)


def _max_diff(a, b) -> float:
    from .measurements import max_abs_diff
    return max_abs_diff(a, b)


def _effect(ctx) -> Effect:
    import torch

    from .measurements import IDENTITY_RTOL, MERGE_RTOL, tol
    art = artifact(ctx)
    base = ctx.base_model
    eff = Effect(identity_rtol=tol(IDENTITY_RTOL, torch.float32),
                 merge_rtol=tol(MERGE_RTOL, torch.float32))
    probe = ctx.probe
    from .peft_targets import original_names
    eff.target_names = original_names(base)
    for name, m in base.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() == 2:
            eff.module_shapes[name] = tuple(int(x) for x in w.shape)
    base_logits = _logits(base, probe, ctx.convention).float()  # (B, T, V)
    eff.base_max_abs = float(base_logits.abs().max())
    if art.kind == "peft":
        _peft_effect(ctx, art, base, base_logits, eff)
    else:
        _user_effect(ctx, art, base, base_logits, eff)
    del base_logits
    return eff


def _peft_effect(ctx, art: Artifact, base, base_logits, eff: Effect) -> None:
    import torch
    from peft import PeftModel, get_peft_model
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    model = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = PeftModel.from_pretrained(base, str(art.path), is_trainable=False)
        except Exception as exc:  # noqa: BLE001 - what a user loading it would see
            eff.load_error = _error(exc)
    eff.load_warnings = [str(w.message) for w in caught
                         if "adapter keys" in str(w.message) or "missing" in str(w.message)]
    if model is None:
        # Build the adapter slots from the config alone on a fresh base, to measure the rest.
        from peft import LoraConfig
        try:
            config = LoraConfig.from_pretrained(str(art.path))
            model = get_peft_model(ctx.fresh_base_model(), config)
        except Exception as exc:  # noqa: BLE001
            eff.notes.append(f"the config cannot build adapters on this base: {_error(exc)}")
            return
    model.eval()
    expected = get_peft_model_state_dict(model)
    eff.expected_keys = sorted(expected)
    eff.adapters = sum(1 for k in expected if ".lora_A." in k or ".lora_embedding_A" in k)
    match = eff.keys = match_keys(_saved_keys(art), eff.expected_keys)
    if eff.load_error is None:
        eff.served_diff = _max_diff(_logits(model, ctx.probe, ctx.convention), base_logits)
        eff.restored = _restored(art, expected, set(match.matched))
    shaped = {match.fixed[k]: t for k, t in art.tensors.items()
              if k in match.fixed and tuple(expected[match.fixed[k]].shape) == tuple(t.shape)}
    if match.patterns or eff.load_error is not None:
        with torch.no_grad():
            set_peft_model_state_dict(model, shaped)
        eff.intended_diff = _max_diff(_logits(model, ctx.probe, ctx.convention), base_logits)
    unmerged = _logits(model, ctx.probe, ctx.convention).float()
    try:
        model.merge_adapter()
        eff.merged_diff = _max_diff(_logits(model, ctx.probe, ctx.convention), unmerged)
        model.unmerge_adapter()
    except Exception as exc:  # noqa: BLE001
        eff.merge_error = _error(exc)
    del unmerged
    eff.updates = _peft_updates(model)


def _restored(art: Artifact, expected: dict, used: set[str]) -> int:
    """Adapters whose saved B PEFT used as it is (key and shape matching)."""
    n = 0
    for k, t in art.tensors.items():
        e = without_adapter_name(k)
        if k in used and (".lora_B." in e or ".lora_embedding_B" in e) and e in expected \
                and tuple(expected[e].shape) == tuple(t.shape):
            n += 1
    return n


def _peft_updates(model) -> list[LayerUpdate]:
    """Each adapted linear layer's relative update, from the adapters found in `model`."""
    from .adapters import discover
    out = []
    for a in discover(model).adapters:
        if a.layer_type != "linear":
            continue
        s = a.declared_scaling if a.declared_scaling is not None else 1.0
        out.append(LayerUpdate(a.name, a.rank, s, relative_update(a.a_matrix(), a.b_matrix(),
                                                                 s, a.base_weight())))
    return out


def relative_update(A, B, scaling: float, W) -> float:
    """||scaling * B @ A||_F / ||W||_F, through (r, r) products: never an (out, in) matrix.

    ||B A||_F^2 = trace(A^T B^T B A) = sum((A A^T) * (B^T B)).
    """
    A, B, W = A.detach().double(), B.detach().double(), W.detach().double()
    sq = float(((A @ A.t()) * (B.t() @ B)).sum())
    w = float(W.norm())
    if w == 0:
        return math.inf if sq > 0 else 0.0
    return abs(scaling) * math.sqrt(max(sq, 0.0)) / w


def _user_effect(ctx, art: Artifact, base, base_logits, eff: Effect) -> None:
    import torch

    from .adapters import discover
    from .measurements import _keys, user_code
    from .safety import rng_preserved

    fn = ctx.apply_fn
    try:
        with rng_preserved(ctx.seed), user_code():
            returned = fn(base)
    except Exception as exc:  # noqa: BLE001
        from ..text import raised_at
        raise InputError(f"--apply {ctx.apply_spec} raised: {raised_at(exc)}") from exc
    model = returned if isinstance(returned, torch.nn.Module) else base
    model.eval()
    found = discover(model).adapters
    eff.adapters = len(found)
    names = {id(t): n for n, t in model.state_dict(keep_vars=True).items()}
    eff.expected_keys = sorted({names[id(t)] for a in found for t in (a.A, a.B) if id(t) in names})
    before = {k: (a.A.detach().clone(), a.B.detach().clone()) for k, a in zip(_keys(found), found)}
    try:
        with user_code():
            art.load_fn(model, str(art.path))
    except Exception as exc:  # noqa: BLE001
        eff.load_error = f"{art.load_fn.__name__} raised {_error(exc)}"
    if eff.load_error is None:
        eff.served_diff = _max_diff(_logits(model, ctx.probe, ctx.convention), base_logits)
        eff.restored = sum(1 for k, a in zip(_keys(found), found)
                           if not (torch.equal(a.A.detach(), before[k][0])
                                   and torch.equal(a.B.detach(), before[k][1])))
    match = eff.keys = match_keys(_saved_keys(art), eff.expected_keys)
    if match.patterns or eff.load_error is not None:
        state = model.state_dict()
        fixed = {match.fixed[k]: t for k, t in art.tensors.items()
                 if k in match.fixed and match.fixed[k] in state
                 and tuple(state[match.fixed[k]].shape) == tuple(t.shape)}
        with torch.no_grad():
            model.load_state_dict(fixed, strict=False)
        eff.intended_diff = _max_diff(_logits(model, ctx.probe, ctx.convention), base_logits)
    eff.updates = _peft_updates(model)  # the factors as loaded (keys put right), unmerged
    unmerged = _logits(model, ctx.probe, ctx.convention).float()
    try:
        with torch.no_grad():
            for a in found:
                if a.layer_type != "linear":
                    continue
                s = a.declared_scaling if a.declared_scaling is not None else 1.0
                w = a.base_weight()
                delta = s * (a.b_matrix().detach().float() @ a.a_matrix().detach().float())
                w.add_(delta.to(w.device, w.dtype))
                a.B.zero_()
        eff.merged_diff = _max_diff(_logits(model, ctx.probe, ctx.convention), unmerged)
    except Exception as exc:  # noqa: BLE001
        eff.merge_error = _error(exc)
    del unmerged


# --- the config against the file ----------------------------------------------------------


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
