"""The rich doctor view, JSON, rule docs and reference runs; the other formats (GitHub
annotations, SARIF, the HTML page) are the `render_*` modules beside this one, and
`render_output` is where a command line chooses among them. Nothing else prints a report.

Colour follows the terminal (rich's detection, `NO_COLOR`, `TERM=dumb`); piped output is
plain text. JSON goes to standard output as exactly one object; progress goes to stderr.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from typing import Iterable

from rich import box
from rich.console import Console, Group
from rich.markdown import Markdown
from rich.padding import Padding
from rich.table import Table as RichTable
from rich.text import Text

from .findings import Curve, Report, Severity, Status, Table, TokenView, jsonable
from .rules import FAMILIES, Rule

MARKS = {Status.PASS: ("✓", "green"), Status.FAIL: ("✗", "bold red"),
         Status.WARN: ("!", "yellow"), Status.SKIP: ("-", "dim"),
         Status.CRASH: ("✗", "bold magenta")}
SEVERITY_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
SPARKS = "▁▂▃▄▅▆▇█"
STATUS_WORDS = {Status.PASS: "passed", Status.FAIL: "failed", Status.WARN: "warned",
                Status.SKIP: "skipped", Status.CRASH: "crashed"}


class _StripTrailingSpaces:
    """A file wrapper for piped output: rich pads wrapped lines with spaces; logs needn't."""

    def __init__(self, file):
        self._file = file

    def write(self, text: str) -> int:
        return self._file.write(_TRAILING.sub("\n", text))

    def flush(self) -> None:
        self._file.flush()

    def isatty(self) -> bool:
        return False


_TRAILING = re.compile(r"[ ]+\n")


def console(stderr: bool = False) -> Console:
    con = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not con.is_terminal:
        stream = sys.stderr if stderr else sys.stdout
        con = Console(file=_StripTrailingSpaces(stream), highlight=False, soft_wrap=False,
                      width=None if "COLUMNS" in os.environ else 140)
    return con


def concise(report: Report, limit: int = 10, title: str | None = None) -> str:
    """The report in a few plain lines: a head line, then one per error finding with its fix."""
    errors = [f for f in report.findings if f.severity is Severity.ERROR]
    c = report.counts()
    head = title or (f"loradoctor found {c['errors']} error{'s' if c['errors'] != 1 else ''}"
                     f" in {len(report.results)} checks")
    lines = [head + (":" if errors else "")]
    for f in errors[:limit]:
        where = f" {f.location}" if f.location else ""
        lines.append(f"  {f.code} {f.name}{where}: {f.message}")
        if f.fix:
            lines.append(f"    fix: {f.fix}")
    if len(errors) > limit:
        lines.append(f"  ... and {len(errors) - limit} more errors")
    return "\n".join(lines)


def print_json(report: Report, version: str) -> None:
    sys.stdout.write(json.dumps(report.to_dict(version), ensure_ascii=False) + "\n")
    sys.stdout.flush()


def print_report(report: Report, *, title: str, verbose: bool = False,
                 out: Console | None = None) -> None:
    out = out or console()
    out.print(Text(title, style="bold"))
    skipped = [r for r in report.results if r.status is Status.SKIP and not r.findings]
    for result in report.results:
        if result in skipped and not verbose:
            continue
        _print_result(out, result, verbose)
    if skipped and not verbose:
        reasons: dict[str, list[str]] = {}
        for r in skipped:
            reasons.setdefault(r.summary or "not applicable", []).append(r.code)
        for reason, codes in reasons.items():
            grid = RichTable.grid(padding=(0, 1))
            grid.add_column(no_wrap=True)
            grid.add_column()
            grid.add_row(Text(f" - skipped {_code_list(codes)}:", style="dim"),
                         Text(reason, style="dim"))
            out.print(grid)
    for view in report.views:
        out.print(render_view(view, plain=out.no_color or not out.color_system))
    out.print(_summary_line(report))


def _print_result(out: Console, result, verbose: bool, traceback: bool | None = None,
                  views: bool = True) -> None:
    """One check's part of the doctor view: its line, findings, views (and traceback)."""
    out.print(_check_line(result))
    for i, f in enumerate(result.findings):
        # A fix shared by consecutive findings is said once, after the last of them.
        nxt = result.findings[i + 1] if i + 1 < len(result.findings) else None
        shared_fix = nxt is not None and nxt.fix == f.fix and not verbose
        out.print(_indent(_finding(f, verbose, show_fix=not shared_fix), 5))
    for view in result.views if views else ():
        out.print(_indent(render_view(view, plain=out.no_color or not out.color_system), 5))
    if result.traceback and (verbose if traceback is None else traceback):
        out.print(_indent(Text(result.traceback.rstrip(), style="magenta"), 5))


def result_text(result, *, evidence: bool = True, views: bool = True, traceback: bool = False,
                width: int = 110) -> str:
    """One check's part of the doctor view as plain text: the pytest plugin's failure text.

    The token view keeps its plain-text wrappers (`[trained]`, `!missed!`) so it reads in a CI
    log; `evidence` adds each finding's evidence line, `views` the token views and tables,
    `traceback` a crash's traceback.
    """
    import io

    buf = io.StringIO()
    out = Console(file=buf, width=width, no_color=True, color_system=None, highlight=False,
                  soft_wrap=False)
    _print_result(out, result, evidence, traceback, views)
    return _TRAILING.sub("\n", buf.getvalue()).rstrip() + "\n"


def _check_line(result) -> RichTable:
    """` ✓ LD101 name  summary`, the summary wrapping under itself, not under the mark."""
    mark, style = MARKS[result.status]
    grid = RichTable.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column()
    head = Text(f" {mark} ", style=style)
    head.append(f"{result.code} ", style="bold")
    head.append(result.name, style=style if result.status is not Status.PASS else "")
    summary = Text(result.summary or "", style="dim" if result.status is Status.PASS else "")
    grid.add_row(head, summary)
    return grid


def _finding(f, verbose: bool, show_fix: bool = True) -> RichTable:
    """severity | code location message, with the fix and evidence hanging under the message."""
    grid = RichTable.grid(padding=(0, 1))
    grid.add_column(no_wrap=True, min_width=7)
    grid.add_column()
    body = Text()
    if f.code != "LD001":
        body.append(f"{f.code} ", style="bold")
    if f.location:
        body.append(f"{f.location}  ", style="cyan")
    body.append(f.message)
    grid.add_row(Text(f.severity.value, style=SEVERITY_STYLE[f.severity]), body)
    if f.fix and show_fix:
        grid.add_row("", Text.assemble(("fix: ", "green"), f.fix))
    if verbose and f.evidence:
        ev = json.dumps(jsonable(f.evidence), ensure_ascii=False)
        grid.add_row("", Text("evidence: " + (ev if len(ev) < 400 else ev[:400] + " ..."),
                              style="dim"))
    return grid


def _indent(renderable, left: int) -> Padding:
    return Padding(renderable, (0, 0, 0, left), expand=False)


def severity_counts(report: Report) -> list[tuple[Severity, str]]:
    """`2 errors`, `1 warning`, ...: the severities the report's findings have, counted."""
    c = report.counts()
    return [(s, f"{c[s.value + 's']} {s.value}{'s' if c[s.value + 's'] != 1 else ''}")
            for s in Severity if c[s.value + "s"]]


def checks_count(report: Report) -> str:
    """`18 checks: 14 passed, 2 failed, 2 skipped`."""
    c = report.counts()
    n_checks = len(report.results)
    statuses = [f"{c['checks_' + s.value]} {STATUS_WORDS[s]}" for s in Status
                if c["checks_" + s.value]]
    return f"{n_checks} check{'s' if n_checks != 1 else ''}: {', '.join(statuses)}"


def _summary_line(report: Report) -> Text:
    parts = severity_counts(report)
    text = Text("\n")
    if parts:
        for i, (severity, words) in enumerate(parts):
            text.append(("" if i == 0 else ", ") + words, style=SEVERITY_STYLE[severity])
    else:
        text.append("no problems found", style="bold green")
    text.append(f" · {checks_count(report)}")
    code = report.exit_code
    text.append(f" · exit {code}", style="bold red" if code else "bold green")
    return text


def _code_list(codes: list[str]) -> str:
    return ", ".join(codes) if len(codes) <= 4 else f"{codes[0]}..{codes[-1]} ({len(codes)} checks)"


# --- views -------------------------------------------------------------------------------


def render_view(view, plain: bool = False):
    if isinstance(view, TokenView):
        return token_view(view, plain)
    if isinstance(view, Table):
        return table_view(view)
    if isinstance(view, Curve):
        return curve_view(view)
    return Text(str(view))


# How each token class looks: (style in colour, wrapper in plain text for logs without colour)
TOKEN_LOOKS = {
    "trained": ("black on green", "[{}]"),
    "masked": ("dim", "{}"),
    "missed": ("bold white on red", "!{}!"),   # should be trained, is masked
    "extra": ("bold black on yellow", "?{}?"),  # trained, should be masked
}
TOKEN_LEGEND = {"trained": "trained", "masked": "masked",
                "missed": "should be trained, is masked", "extra": "trained, should be masked"}


def token_kinds(view: TokenView) -> list[str]:
    """Each token's class (a key of TOKEN_LOOKS): the user's label against the template's."""
    kinds = []
    for i in range(len(view.tokens)):
        user = view.user[i] if i < len(view.user) else False
        truth = view.oracle[i] if view.oracle is not None and i < len(view.oracle) else None
        if truth is not None and truth and not user:
            kinds.append("missed")
        elif truth is not None and user and not truth:
            kinds.append("extra")
        else:
            kinds.append("trained" if user else "masked")
    return kinds


def legend_kinds(view: TokenView) -> list[str]:
    """The classes a view's legend names: disagreements only where there is a truth."""
    return ["trained", "masked"] + (["missed", "extra"] if view.oracle is not None else [])


def shown_token(token: str) -> str:
    """A token as the views show it: newline and tab made visible, an empty one as ∅."""
    return token.replace("\n", "⏎").replace("\t", "⇥") or "∅"


def token_view(view: TokenView, plain: bool = False) -> Group:
    """Tokens by supervision: trained, masked, and where the user and the template disagree.

    In colour, classes are backgrounds; in plain text (CI logs) they are wrappers, so the
    view still says which token is which.
    """
    text = Text()
    for tok, kind in zip(view.tokens, token_kinds(view)):
        shown = shown_token(tok)
        style, wrapper = TOKEN_LOOKS[kind]
        text.append(wrapper.format(shown) if plain else shown, style=style)
        if "⏎" in shown:
            text.append("\n")
        elif not plain:
            text.append("│", style="dim")
        else:
            text.append(" ")
    text.rstrip()
    legend = Text("legend: ", style="dim")
    for i, kind in enumerate(legend_kinds(view)):
        style, wrapper = TOKEN_LOOKS[kind]
        legend.append(" · " if i else "")
        label = TOKEN_LEGEND[kind]
        legend.append(wrapper.format(label) if plain else label, style=style)
    return Group(Text(view.title, style="bold"), text, legend)


def table_view(view: Table) -> RichTable:
    table = RichTable(title=view.title, title_justify="left", show_lines=False, pad_edge=False,
                      box=box.SIMPLE_HEAD)
    for col in view.columns:
        table.add_column(str(col), overflow="fold")
    for row in view.rows:
        table.add_row(*[_cell(v) for v in row])
    return table


def _cell(v) -> Text | str:
    if v is True:
        return Text("✓", style="green")
    if v is False:
        return Text("·", style="dim")
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def sparkline(values: list[float]) -> Text:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    span = (hi - lo) or 1.0
    out = Text()
    for v in values:
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            out.append("×", style="bold red")
        else:
            out.append(SPARKS[min(len(SPARKS) - 1, int((v - lo) / span * (len(SPARKS) - 1)))],
                       style="green")
    return out


def curve_view(view: Curve) -> RichTable:
    table = RichTable(title=view.title, title_justify="left", box=None, pad_edge=False)
    for col in ("pipeline", "loss by step (× = nan/inf)", "first", "last"):
        table.add_column(col)
    for name, values in view.series.items():
        first = _fmt_loss(values[0]) if values else "-"
        last = _fmt_loss(values[-1]) if values else "-"
        table.add_row(name, sparkline(values), first, last)
    return table


def _fmt_loss(v: float) -> Text:
    if not math.isfinite(v):
        return Text(str(v), style="bold red")
    return Text(f"{v:.4f}")


# --- rules -------------------------------------------------------------------------------


def print_rules(rules: Iterable[Rule], out: Console | None = None) -> None:
    """Every rule, grouped by family, sorted by code: code, name, severity, one line."""
    out = out or console()
    table = RichTable(box=None, pad_edge=False, show_header=True, show_edge=False)
    table.add_column("code", no_wrap=True)
    table.add_column("name", no_wrap=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("what it flags", ratio=1)
    family = None
    for r in sorted(rules, key=lambda r: r.code):
        if r.family != family:
            family = r.family
            table.add_row(Text(f"{family}xx", style="bold underline"), "", "",
                          Text(FAMILIES.get(family, ""), style="bold underline"))
        table.add_row(Text(r.code, style="bold"), r.name,
                      Text(r.severity.value, style=SEVERITY_STYLE[r.severity]), r.one_line)
    out.print(table)


def print_rule_doc(rule: Rule, out: Console | None = None) -> None:
    out = out or console()
    out.print(Text(f"{rule.code} {rule.name}", style="bold"),
              Text(f"  ({FAMILIES.get(rule.family, '')}; {rule.severity.value})", style="dim"))
    out.print(Markdown(rule.doc))
