"""Watching a training run step by step: what a Trainer's logs hide.

`Watchdog(model)` keeps a few numbers per step (the loss, the norm of the trainable
parameters' gradients) in a `WatchState`, and after each `step()` the LD42x rules
(`checks/watch.py`) read that state through the one engine: a non-finite loss or gradient
norm, a gradient norm of exactly zero, a loss frozen at one value, a loss collapsed to
`log(vocab_size)` (the model predicts the uniform distribution), adapters whose B factor is
still all zero after `zero_b_after` steps, a loss of exactly 0. Each rule fires once per run;
the finding names the step and the measured values. What happens then is `on_error`:
`"raise"` raises `UnhealthyPipeline`, `"warn"` only records (the callback prints), `"stop"`
records and sets `should_stop` (the Trainer callback ends training with it).

The cost per step is one `float(loss)` (a device sync the training loop usually pays already
for logging) and one fused norm over the trainable gradients; the adapters are found once, at
the first step, and their B factors are read once, at step `zero_b_after`.

A plain PyTorch loop calls `watch.step(loss)` right after `loss.backward()` (gradients
present, before `optimizer.zero_grad()`).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

ON_ERROR = ("raise", "stop", "warn")


@dataclass
class WatchOptions:
    """Thresholds of the run-time rules (named, with defaults; see each rule's docstring)."""

    zero_b_after: int = 5  # LD424: B still all zero after this many steps
    frozen_steps: int = 5  # LD423: this many consecutive steps with the same loss
    frozen_rtol: float = 1e-7
    uniform_steps: int = 3  # LD425: this many consecutive steps at log(V)
    uniform_rtol: float = 0.02  # within 2% of log(V)
    learned_below: float = 0.9  # ... after the loss was once below 90% of log(V)


@dataclass
class WatchState:
    """What the run-time rules read: the current step and a short history."""

    options: WatchOptions = field(default_factory=WatchOptions)
    step: int = 0
    loss: float | None = None
    grad_norm: float | None = None
    losses: deque = field(default_factory=lambda: deque(maxlen=64))
    best_loss: float = math.inf
    vocab_size: int | None = None
    zero_b: list[str] | None = None  # adapters with B all zero, read at step zero_b_after
    n_adapters: int = 0
    fired: set = field(default_factory=set)  # rule codes already reported in this run
    summary: dict[str, Any] = field(default_factory=dict)

    def memo(self, key, compute):  # the engine's context protocol (nothing to share here)
        return compute()


class Watchdog:
    """Run-time checks for a training loop: `watch = Watchdog(model); watch.step(loss)`."""

    def __init__(self, model: Any = None, *, on_error: str = "raise",
                 options: WatchOptions | None = None, select=None, ignore=None):
        from .. import registry
        from ..findings import Report

        if on_error not in ON_ERROR:
            raise ValueError(f"on_error={on_error!r}: expected one of {', '.join(ON_ERROR)}")
        self.model = model
        self.on_error = on_error
        self.state = WatchState(options or WatchOptions())
        self.state.vocab_size = _vocab_size(model)
        self.rules = registry.select(registry.rules_for("watch"), registry.parse_codes(
            ",".join(select) if isinstance(select, (list, tuple)) else select),
            registry.parse_codes(",".join(ignore) if isinstance(ignore, (list, tuple))
                                 else ignore))
        self.report = Report("watch")
        self.should_stop = False
        self._trainable: list | None = None
        self._adapters: list | None = None

    # --- measuring ---------------------------------------------------------------------------

    def step(self, loss: Any, grad_norm: Any = None, step: int | None = None) -> list:
        """Record one optimizer step; returns the findings it raised (and acts per on_error)."""
        s = self.state
        s.step = step if step is not None else s.step + 1
        s.loss = _number(loss)
        s.grad_norm = _number(grad_norm) if grad_norm is not None else self._grad_norm()
        if s.loss is not None:
            s.losses.append(s.loss)
            if math.isfinite(s.loss):
                s.best_loss = min(s.best_loss, s.loss)
        if self.model is not None and s.step >= s.options.zero_b_after and s.zero_b is None:
            s.zero_b = self._zero_b()
        return self._judge()

    def _grad_norm(self) -> float | None:
        if self.model is None:
            return None
        import torch

        if self._trainable is None:
            self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        grads = [p.grad for p in self._trainable if p.grad is not None]
        if not grads:
            return None
        norms = torch._foreach_norm(grads)
        return float(torch.linalg.vector_norm(torch.stack([n.float().to(norms[0].device)
                                                           for n in norms])))

    def _zero_b(self) -> list[str]:
        from .adapters import discover

        if self._adapters is None:
            self._adapters = discover(self.model).adapters
        self.state.n_adapters = len(self._adapters)
        return [a.name for a in self._adapters if not bool(a.B.detach().abs().max() > 0)]

    # --- judging -------------------------------------------------------------------------------

    def _judge(self) -> list:
        from ..engine import run_rule
        from ..findings import Status

        new = []
        for rule in self.rules:
            if rule.code in self.state.fired:
                continue
            result = run_rule(rule, self.state)
            if result.findings and result.status is not Status.SKIP:
                self.state.fired.add(rule.code)
                self.report.results.append(result)
                new.extend(result.findings)
        if not new:
            return new
        if any(f.severity.value == "error" for f in new):
            if self.on_error == "raise":
                from ..errors import UnhealthyPipeline
                from ..render import concise
                report = self.report
                raise UnhealthyPipeline(report, concise(_only(report, new), title=(
                    f"loradoctor stopped the run at step {self.state.step}")))
            if self.on_error == "stop":
                self.should_stop = True
        return new


def _only(report, findings):
    from ..findings import CheckResult, Report, Status
    out = Report(report.command)
    out.results = [CheckResult(f.code, f.name, Status.FAIL, [f]) for f in findings]
    return out


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value.detach().float().mean()) if hasattr(value, "detach") else float(value)
    except (TypeError, ValueError):
        return None


def _vocab_size(model: Any) -> int | None:
    if model is None:
        return None
    config = getattr(model, "config", None)
    n = getattr(config, "vocab_size", None)
    if isinstance(n, int):
        return n
    get = getattr(model, "get_output_embeddings", None)
    emb = get() if callable(get) else None
    weight = getattr(emb, "weight", None)
    return int(weight.shape[0]) if weight is not None else None
