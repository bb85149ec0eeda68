"""What a rule is: a code, a kebab-case name for the pattern it flags, a docstring, a check.

A rule's check is a plain function `check(ctx) -> Outcome` whose docstring is the rule's
documentation (sections *What it does*, *Why is this bad?*, *Example*, *Use instead*), the
same text that `loradoctor rules CODE` prints and `docs/rules.md` is generated from. Checks
measure and return; they never print or exit. Expensive measurements shared by several rules
live on the context object (computed once, cached), so one rule is one line of the report.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from .findings import Finding, Severity, Status, View

FAMILIES = {
    "LD0": "the tool itself",
    "LD1": "dataset, chat template and label masking",
    "LD2": "adapter wiring",
    "LD3": "numerics",
    "LD4": "adapter initialisation and training signal",
    "LD5": "adapter persistence",
}


class SkipCheck(Exception):
    """Raised by a check that cannot run here (no GPU, missing optional package, no input)."""

    def __init__(self, reason: str, *, environment: bool = False):
        super().__init__(reason)
        self.reason = reason
        # An environment skip (no GPU, missing package) is worth an LD002 info finding; a skip
        # because the user did not ask for it (no --dataset) is only shown dimmed.
        self.environment = environment


@dataclass
class Outcome:
    """What a check returns: findings, plus a measured one-liner and views for the renderer."""

    findings: list[Finding] = field(default_factory=list)
    summary: str | None = None
    views: list[View] = field(default_factory=list)
    status: Status | None = None  # normally derived from the findings' severities


@dataclass(frozen=True)
class Rule:
    code: str
    name: str
    command: str  # "dataset" | "model"
    severity: Severity  # the severity its findings usually carry
    check: Callable[[Any], Outcome]
    # Where it can run: False when it reads the module tree, shapes and the user's code alone,
    # so it runs on a model built on the meta device (static mode) too.
    needs_values: bool = True
    # False when it cannot work on weights accelerate offloaded (device_map="auto").
    runs_offloaded: bool = True
    # A data rule that reads the labels alone (no template truth): it runs without a tokenizer.
    needs_tokenizer: bool = True

    @property
    def family(self) -> str:
        return self.code[:3]

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.check.__doc__ or "")

    @property
    def one_line(self) -> str:
        return self.doc.splitlines()[0] if self.doc else ""

    def finding(self, message: str, *, location: str | None = None,
                evidence: dict[str, Any] | None = None, fix: str | None = None,
                severity: Severity | None = None) -> Finding:
        """A finding of this rule (its code and name filled in)."""
        return Finding(self.code, self.name, severity or self.severity, message, location,
                       evidence or {}, fix)


def rule(code: str, name: str, *, command: str, severity: Severity = Severity.ERROR,
         needs_values: bool = True, runs_offloaded: bool = True,
         needs_tokenizer: bool = True):
    """Make a function into a `Rule`. Registration is explicit, in `registry.py`."""

    def wrap(fn: Callable[[Any], Outcome]) -> Rule:
        if not fn.__doc__:
            raise TypeError(f"rule {code} needs a docstring: it is the rule's documentation")
        return Rule(code, name, command, severity, fn, needs_values, runs_offloaded,
                    needs_tokenizer)

    return wrap
