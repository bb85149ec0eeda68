"""loradoctor's numbers on the run's own dashboards, through the Trainer's own logging.

`LoraDoctorCallback` hands its figures to whatever `report_to` the run uses (TensorBoard,
Weights & Biases, MLflow, ...): at each logging step the Trainer's `logs` carry, beside its
loss and learning rate,

- `loradoctor/supervised_share`: the share of the first batches' tokens (under the attention
  mask) whose label is not -100, as the gate read them;
- `loradoctor/grad_norm`: the trainable parameters' gradient norm at the last step;
- `loradoctor/lora_B_norm`, `loradoctor/lora_B_growth`, `loradoctor/lora_B_zero`: the B
  factors' joint norm, its growth since train start, and how many are still all zero;
- `loradoctor/LD424` (one per rule that fired): how many findings that rule has made so far.

A small callback put first in the Trainer's callback list (`LogFeeder`) adds them to each
training `logs` before any integration reads it, so every integration, the progress line and
`state.log_history` see them as the Trainer's own numbers. At train start the gate's figures go
straight to the reporting integrations, with the gate's report as text to those that take text
(TensorBoard's text tab, a W&B string), before the gate raises or stops the run.
"""

from __future__ import annotations

import io
import sys
from collections import Counter
from typing import Any

from transformers import TrainerCallback

from ..findings import Report
from ..model.adapters import discover
from ..model.factor_norms import b_norms

PREFIX = "loradoctor/"
REPORT_KEY = PREFIX + "report"
# The reporting integrations whose `on_log` takes a string value as text.
TEXT_REPORTERS = ("TensorBoardCallback", "WandbCallback")
IGNORE_INDEX = -100


class Dashboards:
    """The figures of one training run, and the Trainer's callback list they are fed into."""

    def __init__(self, handler, report: Report, model: Any = None):
        self.handler = handler
        self.report = report  # the callback's: the gate's results, then the watchdog's
        self.grad_norm: float | None = None
        self.supervised_share: float | None = None
        try:
            self.adapters = discover(model).adapters if model is not None else []
        except Exception:  # noqa: BLE001 - a figure the dashboards lack never stops a run
            self.adapters = []
        start = b_norms(self.adapters)
        self.b_start = start.joint if start is not None else None
        # A new list (see attach()), without a feeder a run that raised at its start left.
        self.feeder = LogFeeder(self)
        handler.callbacks = [self.feeder, *(cb for cb in handler.callbacks
                                            if not isinstance(cb, LogFeeder))]

    @classmethod
    def attach(cls, report: Report, model: Any = None) -> Dashboards | None:
        """Dashboards fed through the Trainer's callback handler that is calling this train
        start (None when the callback is called some other way). The handler iterates the list
        it started with, so the new list with the feeder first takes effect from the next
        event on."""
        handler = calling_handler()
        return cls(handler, report, model) if handler is not None else None

    def detach(self) -> None:
        """Take the feeder out of the Trainer's callbacks (at train end)."""
        self.handler.callbacks = [cb for cb in self.handler.callbacks if cb is not self.feeder]

    def figures(self) -> dict[str, float]:
        """loradoctor's numbers now, keyed `loradoctor/...`."""
        out: dict[str, float] = {}
        if self.supervised_share is not None:
            out[PREFIX + "supervised_share"] = self.supervised_share
        if self.grad_norm is not None:
            out[PREFIX + "grad_norm"] = self.grad_norm
        norms = b_norms(self.adapters)
        if norms is not None:
            out[PREFIX + "lora_B_norm"] = norms.joint
            out[PREFIX + "lora_B_growth"] = norms.joint - (self.b_start or 0.0)
            out[PREFIX + "lora_B_zero"] = norms.zero
        for code, n in sorted(Counter(f.code for f in self.report.findings).items()):
            out[PREFIX + code] = n
        return out

    def log_gate(self, args, state, control, gate: Report, title: str, batches) -> None:
        """The gate's figures (and its report as text) to the reporting integrations, at the
        step training starts from."""
        self.supervised_share = supervised_share(batches) if batches else None
        figures = self.figures()
        text = report_text(gate, title)
        for reporter in reporters(self.handler):
            logs = dict(figures)
            if type(reporter).__name__ in TEXT_REPORTERS:
                logs[REPORT_KEY] = text
            reporter.on_log(args, state, control, logs=logs)


class LogFeeder(TrainerCallback):
    """First of the Trainer's callbacks: puts loradoctor's figures into each training `logs`."""

    def __init__(self, dashboards: Dashboards):
        self.dashboards = dashboards

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return control  # an evaluation's metrics or the run's totals: not a step's
        figures = self.dashboards.figures()
        logs.update(figures)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(figures)  # the Trainer recorded these logs already
        return control


def calling_handler():
    """The `transformers` CallbackHandler up the call stack (the one dispatching this event)."""
    from transformers.trainer_callback import CallbackHandler

    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, CallbackHandler):
            return owner
        frame = frame.f_back
    return None


def reporters(handler) -> list:
    """The reporting integrations among the handler's callbacks (`report_to`'s)."""
    try:
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK
    except ImportError:  # an older layout: nothing to find them by
        return []
    kinds = tuple(INTEGRATION_TO_CALLBACK.values())
    return [cb for cb in handler.callbacks if isinstance(cb, kinds)]


def supervised_share(batches: list) -> float | None:
    """The share of the batches' attended tokens whose label is not the ignore index."""
    supervised = attended = 0
    for batch in batches:
        labels = batch.get("labels") if hasattr(batch, "get") else None
        if labels is None or not hasattr(labels, "ne"):
            continue
        mask = batch.get("attention_mask")
        keep = mask.bool() if mask is not None and mask.shape == labels.shape else None
        supervised += int((labels.ne(IGNORE_INDEX) & keep if keep is not None
                           else labels.ne(IGNORE_INDEX)).sum())
        attended += int(keep.sum()) if keep is not None else labels.numel()
    return supervised / attended if attended else None


def report_text(report: Report, title: str) -> str:
    """The doctor view in plain text, indented four spaces (Markdown's preformatted text, as
    TensorBoard's text tab renders it)."""
    from rich.console import Console

    from ..render import print_report

    buf = io.StringIO()
    print_report(report, title=title, out=Console(file=buf, width=110, no_color=True,
                                                  color_system=None, highlight=False))
    return "\n".join("    " + line.rstrip() for line in buf.getvalue().splitlines())
