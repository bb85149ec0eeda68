"""Leaving the user's model as we found it: checks that perturb or train restore what they touched.

`preserved(model, ...)` is the one context manager check-model uses around anything that
changes state: it restores the values of the tensors it is given (in place, so the parameter
objects and any optimizer holding them stay valid), every `.grad`, every `requires_grad` flag,
every module's train/eval mode, every quantized layer's state (bitsandbytes rewrites its
layers as they run: `quantized_state.kept`) and the global RNG states (torch CPU and CUDA,
Python's `random`, NumPy's when imported). `snapshot()` / `changes()` are a cheap fingerprint
of the same things (a quantized layer's bit for bit), for tests and for the gate.
"""

from __future__ import annotations

import random
import sys
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn

from .quantized_state import differences, fingerprint, kept


@contextmanager
def rng_preserved(seed: int | None = None) -> Iterator[None]:
    """Fork every global RNG for the block (and seed torch inside it when `seed` is given)."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    py_state = random.getstate()
    np = sys.modules.get("numpy")
    np_state = np.random.get_state() if np is not None else None
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            if np is not None and np_state is not None:
                np.random.set_state(np_state)


@contextmanager
def preserved(model: nn.Module, values: Iterable[torch.Tensor] = (), *,
              seed: int | None = 0) -> Iterator[None]:
    """Restore `values` (by copy, in place), grads, requires_grad, modes, quantized layers'
    state and RNG after the block."""
    params = list(model.parameters())
    # backward() accumulates into an existing .grad in place: keep its values, not only the
    # tensor, and put both back (the same tensor object, holding the same numbers).
    grads = [(p, p.grad, None if p.grad is None else p.grad.detach().clone()) for p in params]
    flags = [(p, p.requires_grad) for p in params]
    modes = [(m, m.training) for m in model.modules()]
    seen: set[int] = set()
    saved = []
    for t in values:
        if id(t) in seen:
            continue
        seen.add(id(t))
        saved.append((t, t.detach().clone()))
    try:
        with rng_preserved(seed), kept(model):
            yield
    finally:
        with torch.no_grad():
            for t, copy in saved:
                t.copy_(copy)
        for p, g, grad_values in grads:
            if g is not None:
                with torch.no_grad():
                    g.copy_(grad_values)
            p.grad = g
        for p, flag in flags:
            if p.requires_grad != flag:
                p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def snapshot(model: nn.Module) -> dict:
    """A fingerprint of everything check-model promises not to change (values exactly, by copy)."""
    with kept(model):  # a state_dict of bitsandbytes' CPU layout rewrites the layer back
        state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    return {
        "state": state,
        "quantized": fingerprint(model),
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad": {n: None if p.grad is None else p.grad.detach().clone()
                 for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "rng": torch.get_rng_state().clone(),
        "py_rng": random.getstate(),
    }


def changes(model: nn.Module, before: dict) -> list[str]:
    """What differs from `before` (empty when nothing changed)."""
    after = snapshot(model)
    out = []
    if set(after["state"]) != set(before["state"]):
        changed = sorted(set(after["state"]) ^ set(before["state"]))
        out.append(f"state_dict keys changed: {changed[:5]}")
    for k, v in before["state"].items():
        w = after["state"].get(k)
        if w is not None and (w.shape != v.shape or w.dtype != v.dtype or not torch.equal(w, v)):
            out.append(f"{k} changed")
    for key in ("requires_grad", "training"):
        if after[key] != before[key]:
            diff = [n for n in before[key] if after[key].get(n) != before[key][n]]
            out.append(f"{key} changed for {diff[:5]}")
    for n, g in before["grad"].items():
        h = after["grad"].get(n)
        if (g is None) != (h is None) or (g is not None and not torch.equal(g, h)):
            out.append(f"grad of {n} changed")
    changed = differences(before["quantized"], after["quantized"])
    if changed:
        out.append(f"quantized layer state changed: {changed[:5]}")
    if not torch.equal(after["rng"], before["rng"]):
        out.append("torch RNG state changed")
    if after["py_rng"] != before["py_rng"]:
        out.append("Python random state changed")
    return out
