"""The one place that runs checks. A check that raises becomes a `crash` result.

`InputError` is the exception that is allowed through: it means the user's input cannot be
read at all (exit code 2), which is not a finding about their pipeline.
"""

from __future__ import annotations

import time
import traceback
from typing import Any, Callable, Iterable

from .errors import InputError
from .findings import CheckResult, Finding, Report, Severity, Status
from .rules import Outcome, Rule, SkipCheck

CRASH_CODE, CRASH_NAME = "LD001", "check-crashed"
SKIP_CODE, SKIP_NAME = "LD002", "check-skipped"


def status_from(findings: list[Finding]) -> Status:
    severities = {f.severity for f in findings}
    if Severity.ERROR in severities:
        return Status.FAIL
    if Severity.WARNING in severities:
        return Status.WARN
    return Status.PASS


def run_rule(rule: Rule, ctx: Any) -> CheckResult:
    start = time.perf_counter()
    try:
        outcome = rule.check(ctx)
        if outcome is None:
            outcome = Outcome()
        elif isinstance(outcome, list):
            outcome = Outcome(findings=outcome)
        status = outcome.status or status_from(outcome.findings)
        result = CheckResult(rule.code, rule.name, status, outcome.findings,
                             summary=outcome.summary, views=outcome.views)
    except InputError:
        raise
    except SkipCheck as skip:
        findings = []
        if skip.environment:
            findings.append(Finding(SKIP_CODE, SKIP_NAME, Severity.INFO,
                                    f"{rule.code} {rule.name} skipped: {skip.reason}",
                                    location=rule.code, evidence={"rule": rule.code}))
        result = CheckResult(rule.code, rule.name, Status.SKIP, findings, summary=skip.reason)
    except Exception as exc:  # noqa: BLE001 - a crashing check is reported, never raised
        tb = traceback.format_exc()
        message = f"{rule.code} {rule.name} crashed: {type(exc).__name__}: {exc}"
        crash = Finding(CRASH_CODE, CRASH_NAME, Severity.ERROR, message, location=rule.code,
                        evidence={"rule": rule.code, "exception": type(exc).__name__},
                        fix="a bug in loradoctor or an unexpected input: rerun with -v and "
                            "report the traceback")
        result = CheckResult(rule.code, rule.name, Status.CRASH, [crash], traceback=tb,
                             summary=f"{type(exc).__name__}: {exc}")
    result.duration_s = time.perf_counter() - start
    return result


def run(command: str, rules: Iterable[Rule], ctx: Any,
        on_progress: Callable[[Rule], None] | None = None) -> Report:
    """Run `rules` in order on `ctx`; the context's own summary figures join the report's.

    The context is told which rules will run (`planned_rules`, their codes), so that a
    measurement a later rule needs anyway can serve an earlier one (LD401 and the numerics)."""
    report = Report(command)
    rules = list(rules)
    try:
        ctx.planned_rules = frozenset(r.code for r in rules)
    except AttributeError:  # a context that takes no attributes: nothing is shared
        pass
    for rule in rules:
        if on_progress:
            on_progress(rule)
        report.results.append(run_rule(rule, ctx))
    summary = getattr(ctx, "report_summary", None)
    if callable(summary):
        report.summary.update(summary())
    views = getattr(ctx, "report_views", None)
    if callable(views):
        report.views.extend(views())
    return report
