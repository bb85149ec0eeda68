"""Forward hooks on every module of a model (and gradient hooks on their outputs): the largest
absolute output and output-gradient of each module, and the order in which they finished.

One pass of `passes.py` records through it; so do the reference runs. Modules finish
inside-out, so the *first* module in forward order whose output is non-finite is the one that
produced the inf, not its parents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class ModuleStat:
    """One module's figures in one pass (peaks are max |value|; nan when a nan was seen)."""

    name: str
    order: int
    peak: float
    finite: bool
    grad_order: int | None = None
    grad_peak: float | None = None
    grad_finite: bool | None = None


def _float_tensors(value, depth: int = 0) -> list:
    import torch

    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() and value.numel() else []
    if depth >= 2:
        return []
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _float_tensors(v, depth + 1)]
    if isinstance(value, dict):  # includes transformers' ModelOutput
        return [t for v in value.values() for t in _float_tensors(v, depth + 1)]
    return []


def peak_of(t):
    """max |t| as a 0-d tensor on t's device (nan if t holds a nan); no host sync."""
    import torch

    lo, hi = torch.aminmax(t.detach())
    return torch.maximum(lo.abs(), hi.abs()).float()


class ModuleRecorder:
    """Forward hooks on every named module (and gradient hooks on their outputs).

    Records 0-d peak tensors and the order of events; `stats()` turns them into `ModuleStat`s
    with one host transfer. A parent module whose output is the very tensor its last child
    returned (an MLP and its down_proj) reuses the child's figure instead of scanning it again.
    """

    def __init__(self, model, backward: bool = True):
        self.model = model
        self.backward = backward
        self.names: list[str] = []
        self.fwd: list[tuple[int, Any]] = []  # (module index, peak) in completion order
        self.bwd: list[tuple[int, Any]] = []  # (module index, grad peak) in backward order
        self._handles: list = []
        self._last_t = self._last_peak = None
        self._last_g = self._last_gpeak = None

    def __enter__(self):
        for name, module in self.model.named_modules():
            if not name:
                continue  # the root: its output is the logits (lm_head's) and the loss
            idx = len(self.names)
            self.names.append(name)
            self._handles.append(module.register_forward_hook(self._forward_hook(idx)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._last_t = self._last_peak = self._last_g = self._last_gpeak = None
        return False

    def _forward_hook(self, idx: int) -> Callable:
        import torch

        def hook(module, args, output):
            peaks = []
            for t in _float_tensors(output):
                if t is self._last_t:
                    peak = self._last_peak  # the child's very tensor: no second scan
                else:
                    peak = peak_of(t)
                    self._last_t, self._last_peak = t, peak
                peaks.append(peak)
                if self.backward and t.requires_grad:
                    self._handles.append(t.register_hook(self._grad_hook(idx)))
            if peaks:
                self.fwd.append((idx, peaks[0] if len(peaks) == 1 else torch.stack(peaks).max()))
        return hook

    def _grad_hook(self, idx: int) -> Callable:
        def hook(grad):
            if grad is self._last_g:
                peak = self._last_gpeak
            else:
                peak = peak_of(grad)
                self._last_g, self._last_gpeak = grad, peak
            self.bwd.append((idx, peak))
        return hook

    def stats(self) -> list[ModuleStat]:
        import torch

        if not self.fwd:
            return []
        fwd = torch.stack([p for _, p in self.fwd]).cpu().tolist()
        bwd = torch.stack([p for _, p in self.bwd]).cpu().tolist() if self.bwd else []
        out: dict[int, ModuleStat] = {}
        for order, ((idx, _), peak) in enumerate(zip(self.fwd, fwd)):
            finite = math.isfinite(peak)
            s = out.get(idx)
            if s is None:
                out[idx] = ModuleStat(self.names[idx], order, peak, finite)
            else:
                s.peak = peak if not finite or not s.finite else max(s.peak, peak)
                s.finite = s.finite and finite
        for order, ((idx, _), peak) in enumerate(zip(self.bwd, bwd)):
            s = out[idx]
            finite = math.isfinite(peak)
            if s.grad_order is None:
                s.grad_order, s.grad_peak, s.grad_finite = order, peak, finite
            else:
                s.grad_peak = peak if not finite or not s.grad_finite else max(s.grad_peak, peak)
                s.grad_finite = s.grad_finite and finite
        return sorted(out.values(), key=lambda s: s.order)
