"""The data a check produces: findings, check results, views, and the report. Data only.

Nothing here prints. `render.py` turns a `Report` into the doctor view or JSON; the CLI,
the gate and the pytest plugin read `Report.exit_code` and `Report.findings`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Severity(str, Enum):
    """How bad a finding is. `error`: training this pipeline is wasted or wrong."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Status(str, Enum):
    """The outcome of one check, shown as one line of the doctor view."""

    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"
    SKIP = "skip"
    CRASH = "crash"


@dataclass
class Finding:
    """One measured fact about the user's pipeline, with where it is and how to fix it."""

    code: str
    name: str
    severity: Severity
    message: str
    location: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "severity": self.severity.value,
            "message": self.message,
            "location": self.location,
            "evidence": jsonable(self.evidence),
            "fix": self.fix,
        }


# --- Views: structured extras a check attaches for the renderer (never printed here) ---


@dataclass
class TokenView:
    """One sample's tokens with what the user supervised and what should be supervised.

    `user[i]` / `oracle[i]` are True where token i carries a label. `oracle` may be None when
    there is no truth to compare with (then only the user's mask is coloured).
    """

    title: str
    tokens: list[str]
    user: list[bool]
    oracle: list[bool] | None = None


@dataclass
class Table:
    """A small table (coverage by layer and kind, per-module peaks, ...)."""

    title: str
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class Curve:
    """Loss curves of a reference run, one series per pipeline (NaN/inf kept as such)."""

    title: str
    series: dict[str, list[float]]


View = TokenView | Table | Curve


@dataclass
class CheckResult:
    """One check's outcome: its status, findings, a one-line measured summary and views."""

    code: str
    name: str
    status: Status
    findings: list[Finding] = field(default_factory=list)
    duration_s: float = 0.0
    summary: str | None = None
    views: list[View] = field(default_factory=list)
    traceback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"code": self.code, "name": self.name, "status": self.status.value,
               "duration_s": round(self.duration_s, 4)}
        if self.summary:
            out["summary"] = self.summary
        return out


@dataclass
class Report:
    """Everything one command found. `exit_code` follows the contract (0 clean, 1 error/crash)."""

    command: str
    results: list[CheckResult] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    views: list[View] = field(default_factory=list)  # report-level views (e.g. loss curves)
    # A `--shard I/N` run's measurements, plain JSON, for `loradoctor merge` (`shards.py`).
    partial: dict[str, Any] | None = None

    @property
    def findings(self) -> list[Finding]:
        return [f for r in self.results for f in r.findings]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.ERROR]

    @property
    def ok(self) -> bool:
        """No error finding and no crashed check: the pipeline may train."""
        return self.exit_code == 0

    @property
    def exit_code(self) -> int:
        crashed = any(r.status is Status.CRASH for r in self.results)
        return 1 if crashed or self.errors else 0

    def counts(self) -> dict[str, int]:
        by_status = {s.value: 0 for s in Status}
        for r in self.results:
            by_status[r.status.value] += 1
        by_severity = {s.value: 0 for s in Severity}
        for f in self.findings:
            by_severity[f.severity.value] += 1
        return {**{f"checks_{k}": v for k, v in by_status.items()},
                **{f"{k}s": v for k, v in by_severity.items()}}

    def to_dict(self, version: str) -> dict[str, Any]:
        out = {
            "tool": "loradoctor",
            "version": version,
            "command": self.command,
            "findings": [f.to_dict() for f in self.findings],
            "checks": [r.to_dict() for r in self.results],
            "summary": jsonable({**self.counts(), **self.summary, "exit_code": self.exit_code}),
        }
        if self.partial is not None:
            out["partial"] = self.partial
        return out


def jsonable(value: Any) -> Any:
    """Make evidence safe for strict JSON: tensors and numpy to lists, NaN/inf to strings."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # "nan", "inf": JSON has neither
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if hasattr(value, "tolist"):  # torch / numpy scalars and arrays
        return jsonable(value.tolist())
    return str(value)
