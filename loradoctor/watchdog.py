"""`Watchdog`: the run-time checks for a plain PyTorch training loop (a front end, as the
Trainer callback is).

`Watchdog(model)` keeps a few numbers per step (the loss, the norm of the trainable
parameters' gradients) in a `WatchState` (`model/run_state.py`), and after each `step()` the
LD42x rules (`checks/training_run.py`) read that state through the one engine: a non-finite loss
or gradient norm, a gradient norm of exactly zero, a loss frozen at one value, a loss collapsed
to `log(vocab_size)` (the model predicts the uniform distribution), adapters whose B factor is
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
from typing import Any

from . import distributed, registry
from .engine import run_rule
from .errors import UnhealthyPipeline
from .findings import CheckResult, Report, Status
from .model.adapters import discover
from .model.run_state import (WatchOptions, WatchState, number, trainable_grad_norm, vocab_size,
                              zero_b_adapters)

ON_ERROR = ("raise", "stop", "warn")


class Watchdog:
    """Run-time checks for a training loop: `watch = Watchdog(model); watch.step(loss)`."""

    def __init__(self, model: Any = None, *, on_error: str = "raise",
                 options: WatchOptions | None = None, select=None, ignore=None):

        if on_error not in ON_ERROR:
            raise ValueError(f"on_error={on_error!r}: expected one of {', '.join(ON_ERROR)}")
        self.model = model
        self.on_error = on_error
        self.state = WatchState(options or WatchOptions())
        self.state.vocab_size = vocab_size(model)
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
        s.loss = number(loss)
        s.grad_norm = number(grad_norm) if grad_norm is not None else self.grad_norm()
        if s.loss is not None:
            s.losses.append(s.loss)
            if math.isfinite(s.loss):
                s.best_loss = min(s.best_loss, s.loss)
        if self.model is not None and s.step >= s.options.zero_b_after and s.zero_b is None:
            s.zero_b = self._zero_b()
        return self._judge()

    def grad_norm(self) -> float | None:
        """The norm of the trainable parameters' gradients now (None without a model or grads)."""
        if self.model is None:
            return None
        if self._trainable is None:
            self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        return trainable_grad_norm(self._trainable)

    def _zero_b(self) -> list[str]:
        if self._adapters is None:
            self._adapters = discover(self.model).adapters
        self.state.n_adapters = len(self._adapters)
        return zero_b_adapters(self._adapters)

    # --- judging -------------------------------------------------------------------------------

    def _judge(self) -> list:
        results = []
        for rule in self.rules:
            if rule.code in self.state.fired:
                continue
            result = run_rule(rule, self.state)
            if result.findings and result.status is not Status.SKIP:
                results.append(result)
        results = self._agreed(results)
        for result in results:
            self.state.fired.add(result.code)
            self.report.results.append(result)
        new = [f for r in results for f in r.findings]
        if any(f.severity.value == "error" for f in new):
            if self.on_error == "raise":
                from .render import concise  # rich: imported only when it prints
                raise UnhealthyPipeline(self.report, concise(findings_report(
                    new, self.report.command), title=(
                        f"loradoctor stopped the run at step {self.state.step}")))
            if self.on_error == "stop":
                self.should_stop = True
        return new

    def _agreed(self, results: list) -> list:
        """Under several processes, what every rank found at this step, on every rank (each
        finding naming its rank): one all-reduce when no rank found anything."""
        if not distributed.world().several:
            return results
        found = [f for r in results for f in r.findings]
        if distributed.worst_severity(distributed.level_of(found)) == 0:
            return []
        parts = distributed.gather(Report(self.report.command, results))
        return distributed.merged([(part, None) for part in parts], self.report.command).results


def findings_report(findings, command: str = "watch") -> Report:
    """A Report holding just these findings, one failed result each (what a step raised)."""
    out = Report(command)
    out.results = [CheckResult(f.code, f.name, Status.FAIL, [f]) for f in findings]
    return out
