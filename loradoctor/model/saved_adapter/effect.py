"""What the saved adapter does to the base model on the probe batch, loaded the way it will be
loaded (PEFT's `PeftModel.from_pretrained`, or the user's own load function), loaded with its
keys put right, and merged; and the relative size of each layer's update.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

from ...errors import InputError
from ..adapters import discover
from ..shared import (IDENTITY_RTOL, MERGE_RTOL, adapter_keys, logits, logits_diff, tol,
                      user_code)
from .files import Artifact, artifact, read_error
from .key_match import KeyMatch, match_keys, saved_keys, without_adapter_name


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


def effect(ctx) -> Effect:
    return ctx.memo("artifact_effect", lambda: _effect(ctx))


def keys(ctx) -> KeyMatch:
    eff = effect(ctx)
    if eff.keys is None:
        eff.keys = match_keys(saved_keys(artifact(ctx)), eff.expected_keys)
    return eff.keys


def _effect(ctx) -> Effect:
    import torch

    art = artifact(ctx)
    base = ctx.base_model
    eff = Effect(identity_rtol=tol(IDENTITY_RTOL, torch.float32),
                 merge_rtol=tol(MERGE_RTOL, torch.float32))
    probe = ctx.probe
    from ..peft_targets import original_names
    eff.target_names = original_names(base)
    for name, m in base.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() == 2:
            eff.module_shapes[name] = tuple(int(x) for x in w.shape)
    base_logits = logits(base, probe, ctx.convention).float()  # (B, T, V)
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
            eff.load_error = read_error(exc)
    eff.load_warnings = [str(w.message) for w in caught
                         if "adapter keys" in str(w.message) or "missing" in str(w.message)]
    if model is None:
        # Build the adapter slots from the config alone on a fresh base, to measure the rest.
        from peft import LoraConfig
        try:
            config = LoraConfig.from_pretrained(str(art.path))
            model = get_peft_model(ctx.fresh_base_model(), config)
        except Exception as exc:  # noqa: BLE001
            eff.notes.append(f"the config cannot build adapters on this base: {read_error(exc)}")
            return
    model.eval()
    expected = get_peft_model_state_dict(model)
    eff.expected_keys = sorted(expected)
    eff.adapters = sum(1 for k in expected if ".lora_A." in k or ".lora_embedding_A" in k)
    match = eff.keys = match_keys(saved_keys(art), eff.expected_keys)
    if eff.load_error is None:
        eff.served_diff = logits_diff(model, ctx.probe, base_logits, ctx.convention)
        eff.restored = _restored(art, expected, set(match.matched))
    shaped = {match.fixed[k]: t for k, t in art.tensors.items()
              if k in match.fixed and tuple(expected[match.fixed[k]].shape) == tuple(t.shape)}
    if match.patterns or eff.load_error is not None:
        with torch.no_grad():
            set_peft_model_state_dict(model, shaped)
        eff.intended_diff = logits_diff(model, ctx.probe, base_logits, ctx.convention)
    unmerged = logits(model, ctx.probe, ctx.convention).float()
    try:
        model.merge_adapter()
        eff.merged_diff = logits_diff(model, ctx.probe, unmerged, ctx.convention)
        model.unmerge_adapter()
    except Exception as exc:  # noqa: BLE001
        eff.merge_error = read_error(exc)
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

    from ..safety import rng_preserved

    fn = ctx.apply_fn
    try:
        with rng_preserved(ctx.seed), user_code():
            returned = fn(base)
    except Exception as exc:  # noqa: BLE001
        from ...text import raised_at
        raise InputError(f"--apply {ctx.apply_spec} raised: {raised_at(exc)}") from exc
    model = returned if isinstance(returned, torch.nn.Module) else base
    model.eval()
    found = discover(model).adapters
    eff.adapters = len(found)
    names = {id(t): n for n, t in model.state_dict(keep_vars=True).items()}
    eff.expected_keys = sorted({names[id(t)] for a in found for t in (a.A, a.B) if id(t) in names})
    before = {k: (a.A.detach().clone(), a.B.detach().clone())
              for k, a in zip(adapter_keys(found), found)}
    try:
        with user_code():
            art.load_fn(model, str(art.path))
    except Exception as exc:  # noqa: BLE001
        eff.load_error = f"{art.load_fn.__name__} raised {read_error(exc)}"
    if eff.load_error is None:
        eff.served_diff = logits_diff(model, ctx.probe, base_logits, ctx.convention)
        eff.restored = sum(1 for k, a in zip(adapter_keys(found), found)
                           if not (torch.equal(a.A.detach(), before[k][0])
                                   and torch.equal(a.B.detach(), before[k][1])))
    match = eff.keys = match_keys(saved_keys(art), eff.expected_keys)
    if match.patterns or eff.load_error is not None:
        state = model.state_dict()
        fixed = {match.fixed[k]: t for k, t in art.tensors.items()
                 if k in match.fixed and match.fixed[k] in state
                 and tuple(state[match.fixed[k]].shape) == tuple(t.shape)}
        with torch.no_grad():
            model.load_state_dict(fixed, strict=False)
        eff.intended_diff = logits_diff(model, ctx.probe, base_logits, ctx.convention)
    eff.updates = _peft_updates(model)  # the factors as loaded (keys put right), unmerged
    unmerged = logits(model, ctx.probe, ctx.convention).float()
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
        eff.merged_diff = logits_diff(model, ctx.probe, unmerged, ctx.convention)
    except Exception as exc:  # noqa: BLE001
        eff.merge_error = read_error(exc)
    del unmerged
