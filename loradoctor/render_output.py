"""Where a finished report goes: the one choice of renderer for every command line.

`--format text|json|github|sarif` picks what standard output holds (the doctor view, one JSON
object, GitHub Actions annotations, a SARIF 2.1.0 log), and `--html PATH` also writes the page;
the check commands, `merge`, Ray's entry point and `reference` all hand their report here, so
each format is one renderer reading the one `Report`. Under a machine format standard output
holds that output alone; the HTML page's path is said on standard error.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError


@dataclass
class Output:
    """What the command line asked for: a format for stdout, maybe an HTML page, verbosity;
    and the paths the run was given, where a finding's file is looked for."""

    format: str = "text"
    html: str | None = None
    verbose: bool = False
    sources: list[Path] = field(default_factory=list)

    @classmethod
    def from_args(cls, args: Any, sources: Iterable[str | Path] = ()) -> Output:
        return cls(getattr(args, "format", None) or "text", getattr(args, "html", None),
                   bool(getattr(args, "verbose", False)), [Path(s) for s in sources])

    @property
    def machine(self) -> bool:
        """Stdout is for a program (no progress display, nothing but the output)."""
        return self.format != "text"

    def check_html_path(self) -> None:
        """Before a run of minutes: the page's folder must exist (an input error otherwise)."""
        if self.html is None:
            return
        target = Path(self.html)
        if target.is_dir():
            raise InputError(f"--html {self.html}: is a folder; give the page's file name")
        if not target.parent.is_dir():
            raise InputError(f"--html {self.html}: folder {target.parent} does not exist")


def write_report(report, output: Output, *, title: str, version: str,
                 exit_code: int | None = None) -> None:
    """The report to stdout in the chosen format, and to the HTML page if one was asked for."""
    from .render_places import Places

    if output.html is not None:
        from .render_html import html_page, write_html
        path = write_html(output.html, html_page(report, title=title, version=version,
                                                 exit_code=exit_code))
        print(f"loradoctor: HTML report written to {path}", file=sys.stderr)
    if output.format == "json":
        from .render import print_json
        print_json(report, version)
    elif output.format == "github":
        from .render_github import print_github
        print_github(report, Places(output.sources))
    elif output.format == "sarif":
        from .render_sarif import print_sarif
        print_sarif(report, Places(output.sources), version)
    else:
        from .render import print_report
        print_report(report, title=title, verbose=output.verbose)
