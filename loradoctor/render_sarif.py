"""`--format sarif`: the report as a SARIF 2.1.0 log, the format GitHub code scanning reads.

One run of the tool `loradoctor`; its driver holds one `rule` per LD code the report ran or
found (its kebab-case name, its one-line description, its "What it does" section, and as help
the documentation `loradoctor rules CODE` prints, in Markdown); one `result` per finding, with
the finding's level, its message and fix, and where it is: a physical location (an artifact
URI relative to the repository, `%SRCROOT%`, and the line) when the location is a file
(`render_places.Places`), else no location at all, which SARIF allows (a module path or a step
is said in the message and kept in the result's properties). The invocation carries the exit
code; `properties` carry the report's summary, as `--json` has it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from . import registry
from .errors import InputError
from .findings import Finding, Report, Severity, Status, jsonable
from .render_places import Place, Places
from .rules import FAMILIES, Rule

SCHEMA = ("https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/"
          "sarif-schema-2.1.0.json")
ROOT_ID = "%SRCROOT%"
LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
# GitHub code scanning's own severity words (`problem.severity`) for a rule's findings.
PROBLEM_SEVERITY = {Severity.ERROR: "error", Severity.WARNING: "warning",
                    Severity.INFO: "recommendation"}
_SECTION = re.compile(r"^## What it does\n(?P<body>.*?)(?=^## |\Z)", re.DOTALL | re.MULTILINE)


def sarif_log(report: Report, places: Places, version: str) -> dict[str, Any]:
    """The whole SARIF log of one report: a dict ready for `json.dumps`."""
    rules = _rules_of(report)
    index = {r.code: i for i, r in enumerate(rules)}
    run: dict[str, Any] = {
        "tool": {"driver": {"name": "loradoctor", "version": version,
                            "semanticVersion": version,
                            "rules": [rule_descriptor(r) for r in rules]}},
        # A crashed check is the tool failing; findings, however bad, are a successful run.
        "invocations": [{"executionSuccessful": not any(r.status is Status.CRASH
                                                        for r in report.results),
                         "exitCode": report.exit_code}],
        "originalUriBaseIds": {ROOT_ID: {"uri": places.root.as_uri().rstrip("/") + "/"}},
        "results": [result(f, index.get(f.code), places) for f in report.findings],
        "properties": {"command": report.command,
                       "summary": jsonable({**report.counts(), **report.summary,
                                            "exit_code": report.exit_code})},
    }
    return {"$schema": SCHEMA, "version": "2.1.0", "runs": [run]}


def _rules_of(report: Report) -> list[Rule]:
    """The rules of the checks the report ran and of its findings, in report order, once."""
    codes = dict.fromkeys([*(r.code for r in report.results), *(f.code for f in report.findings)])
    out = []
    for code in codes:
        try:
            out.append(registry.get(code))
        except InputError:  # not a rule of this version (a partial from another): no metadata
            continue
    return out


def rule_descriptor(rule: Rule) -> dict[str, Any]:
    """A SARIF `reportingDescriptor`: what `loradoctor rules CODE` says about the rule."""
    doc = rule.doc
    what = _SECTION.search(doc)
    return {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": rule.one_line},
        "fullDescription": {"text": " ".join(what["body"].split()) if what else rule.one_line},
        "help": {"text": doc, "markdown": doc},
        "defaultConfiguration": {"level": LEVELS[rule.severity]},
        "properties": {"tags": ["loradoctor", FAMILIES.get(rule.family, rule.family)],
                       "problem.severity": PROBLEM_SEVERITY[rule.severity],
                       "precision": "high"},
    }


def result(finding: Finding, rule_index: int | None, places: Places) -> dict[str, Any]:
    """One finding as a SARIF `result`."""
    place = places.of_finding(finding)
    text = finding.message
    if finding.location and place is None:
        text += f" (at {finding.location})"
    if finding.fix:
        text += f"\nFix: {finding.fix}"
    out: dict[str, Any] = {"ruleId": finding.code, "level": LEVELS[finding.severity],
                           "message": {"text": text}}
    if rule_index is not None:
        out["ruleIndex"] = rule_index
    place = place or places.fallback()  # GitHub rejects the whole file for one without
    if place is not None:
        out["locations"] = [{"physicalLocation": physical_location(place)}]
    out["properties"] = {"name": finding.name, "location": finding.location,
                         "fix": finding.fix, "evidence": jsonable(finding.evidence)}
    return out


def physical_location(place: Place) -> dict[str, Any]:
    if place.inside:
        artifact = {"uri": _uri_path(place.path), "uriBaseId": ROOT_ID}
    else:
        artifact = {"uri": Path(place.path).as_uri()}
    out: dict[str, Any] = {"artifactLocation": artifact}
    if place.line is not None:
        out["region"] = {"startLine": max(1, place.line)}
        if place.end_line is not None:
            out["region"]["endLine"] = place.end_line
    return out


def _uri_path(path: str) -> str:
    """A relative path as a URI reference: each segment percent-encoded, `/` kept."""
    return quote(path, safe="/")


def print_sarif(report: Report, places: Places, version: str) -> None:
    sys.stdout.write(json.dumps(sarif_log(report, places, version), ensure_ascii=False,
                                indent=2) + "\n")
    sys.stdout.flush()
