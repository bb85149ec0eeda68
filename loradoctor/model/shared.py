"""What every check-model measurement shares: the adapters found (and the keys that tell two on
one layer apart), the dtype they compute in, the tolerances by dtype, the user's code kept off
stdout and their own save/load pair, and logits compared.

The measurements themselves each have their module: `layer_probe.py` (each adapted layer on
its own), `identity.py` (the adapted model against the base at init), `gradients.py` (one real
backward), `round_trip.py` (save, load into a fresh copy, merge), `torch_load.py` (the user's
`torch.load` calls); static and offloaded models in `static.py` and `offload.py`. Each is
computed once per run through `ctx.memo`.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from . import convention as conv_
from .adapters import Adapter, Discovery, discover
from .quantized import compute_dtype, quant_kind
from ..rules import SkipCheck

# Relative tolerances by the dtype the adapted layers compute in (named, not buried).
# The per-layer probe: an adapted layer's output against F.linear plus its adapter.
MODULE_RTOL = {torch.float32: 1e-4, torch.float64: 1e-8, torch.float16: 2e-2,
               torch.bfloat16: 5e-2}
# Identity start: max |adapted - base| logits, relative to max(1, max |base logits|).
IDENTITY_RTOL = {torch.float32: 1e-4, torch.float64: 1e-8, torch.float16: 1e-2,
                 torch.bfloat16: 5e-2}
# Round trip and merge: same scale; merging reorders float math, so it gets more room.
ROUNDTRIP_RTOL = {torch.float32: 1e-4, torch.float64: 1e-8, torch.float16: 1e-2,
                  torch.bfloat16: 5e-2}
MERGE_RTOL = {torch.float32: 1e-3, torch.float64: 1e-6, torch.float16: 3e-2,
              torch.bfloat16: 1e-1}
# The user's own save/load pairs looked for beside the apply function, in this order.
SAVE_LOAD_NAMES = [("save_lora", "load_lora"), ("save_adapter", "load_adapter"),
                   ("save_adapters", "load_adapters"), ("save_lora_weights", "load_lora_weights")]


@contextmanager
def user_code() -> Iterator[None]:
    """Around the user's own code: whatever it prints goes to stderr, never into --json stdout."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def tol(table: dict, dtype: torch.dtype) -> float:
    return table.get(dtype, table[torch.float32])


def discovery(ctx) -> Discovery:
    return ctx.memo("adapters", lambda: discover(ctx.adapted))


def adapters_or_skip(ctx, linear_only: bool = False) -> list[Adapter]:
    """The adapters to check; SkipCheck when there is no adapter code and none in the model."""
    disc = discovery(ctx)
    found = [a for a in disc.adapters if a.layer_type == "linear" or not linear_only]
    if not disc.adapters:
        if ctx.apply_spec is None and ctx.peft_kwargs is None:
            raise SkipCheck("no adapter code given (--apply SPEC or --peft ...)")
        raise SkipCheck("no adapter found in the adapted model (see LD210)")
    if not found:
        raise SkipCheck("no adapter on a linear layer")
    return found


def model_dtype(ctx) -> torch.dtype:
    """The dtype the adapted layers compute in (tolerances depend on it): a quantized base
    layer's compute dtype (bf16 in QLoRA), else its weight's."""
    for a in discovery(ctx).adapters:
        if a.layer_type == "linear":
            if quant_kind(a.base) is not None:
                return compute_dtype(a.base)
            return a.base_weight().dtype
    return next(ctx.adapted.parameters()).dtype


def logits(model, probe: dict, conv: conv_.LossConvention = conv_.HF) -> torch.Tensor:
    """(B, T, V) logits without a graph, the model called as its convention says."""
    with torch.no_grad():
        return conv_.logits(model, probe, conv)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| (inf when either holds a NaN), with one full-size temporary only."""
    d = a.float() - b.float()
    d.abs_()
    if bool(torch.isnan(d).any()):
        return math.inf
    return float(d.max())


def logits_diff(model, probe: dict, reference: torch.Tensor,
                conv: conv_.LossConvention = conv_.HF) -> float:
    """max |logits of `model` - `reference`| on the probe batch."""
    return max_abs_diff(logits(model, probe, conv), reference)


def user_save_load(apply_fn, *, load_only: bool = False) -> tuple[Callable | None,
                                                                  Callable | None, str | None]:
    """The user's own save/load pair beside the apply function (`save_lora` / `load_lora`,
    ...), each taking (model, path): (save, load, the save function's name). A pair whose save
    function is missing is passed over unless `load_only` (check-adapter only loads)."""
    glb = getattr(apply_fn, "__globals__", None)
    if not isinstance(glb, dict):
        return None, None, None
    for save_name, load_name in SAVE_LOAD_NAMES:
        save, load = _two_argument(glb.get(save_name)), _two_argument(glb.get(load_name))
        if load is not None and (save is not None or load_only):
            return save, load, save_name
    return None, None, None


def _two_argument(fn) -> Callable | None:
    """`fn` when it is a callable taking (model, path), else None."""
    if not callable(fn):
        return None
    try:
        inspect.signature(fn).bind(None, None)
        return fn
    except (TypeError, ValueError):
        return None


def adapter_keys(adapters) -> list[tuple[str, int]]:
    """(name, n): the n-th adapter on that layer (a layer adapted twice has two)."""
    seen: dict[str, int] = {}
    out = []
    for a in adapters:
        seen[a.name] = seen.get(a.name, -1) + 1
        out.append((a.name, seen[a.name]))
    return out
