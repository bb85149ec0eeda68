"""`--format github`: one GitHub Actions workflow command per finding.

    ::error file=fixtures/data/persona.jsonl,line=1,title=LD101 no-supervised-tokens::24 of 24 ...

`error`, `warning` and `info` findings become `::error`, `::warning` and `::notice`. A finding
whose location is a file (`render_places.Places`) carries `file=` (and `line=` when known), so
GitHub shows it on that line of the pull request's diff; any other finding is an annotation
without a file, shown on the run's summary. The message is the finding's message, its place
when that is not a file (a module path, a step) and its fix, on lines of their own.
"""

from __future__ import annotations

import sys

from .findings import Finding, Report, Severity
from .render_places import Places

COMMANDS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def escape_data(text: str) -> str:
    """A workflow command's message: `%`, CR and LF escaped as the runner reads them."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value: also `:` and `,`, which end a property."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(finding: Finding, places: Places) -> str:
    """One finding as one workflow command line."""
    place = places.of_finding(finding)
    if place is not None and not place.inside:  # GitHub places files of the checkout only
        place = None
    props = []
    if place is not None:
        props.append(f"file={escape_property(place.path)}")
        if place.line is not None:
            props.append(f"line={place.line}")
        if place.end_line is not None:
            props.append(f"endLine={place.end_line}")
    props.append(f"title={escape_property(f'{finding.code} {finding.name}')}")
    lines = [finding.message]
    if finding.location and place is None:
        lines.append(f"at: {finding.location}")
    if finding.fix:
        lines.append(f"fix: {finding.fix}")
    return f"::{COMMANDS[finding.severity]} {','.join(props)}::{escape_data(chr(10).join(lines))}"


def annotations(report: Report, places: Places) -> list[str]:
    return [annotation(f, places) for f in report.findings]


def print_github(report: Report, places: Places) -> None:
    for line in annotations(report, places):
        sys.stdout.write(line + "\n")
    sys.stdout.flush()
