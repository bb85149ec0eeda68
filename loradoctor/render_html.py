"""`--html PATH`: the whole report as one self-contained HTML page, to keep or send on.

One file, nothing fetched: the style is inline, there is no script, no font, no image but
inline SVG. The page holds what the doctor view holds: the head line, every finding with its
place, message, fix and evidence, every check with its status and measured summary, and the
views: token views coloured by supervision (trained, masked, should be trained but masked,
trained but should be masked; the classes `render.token_kinds` gives), tables (coverage by
layer, fp32 / bf16 / fp16 figures) and loss curves (`render_svg.curve_svg`).
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from .errors import InputError
from .findings import CheckResult, Curve, Finding, Report, Status, Table, TokenView, jsonable
from .render import (MARKS, TOKEN_LEGEND, checks_count, legend_kinds, severity_counts,
                     shown_token, token_kinds)
from .render_svg import curve_svg

# The token classes' (background, text) colours, used for nothing else on the page: a test
# finds each class in a browser's screenshot by its background.
TOKEN_COLOURS = {"trained": ("#2da44e", "#ffffff"), "masked": ("#d5dbe1", "#424a53"),
                 "missed": ("#e0403a", "#ffffff"), "extra": ("#e3b341", "#000000")}
STATUS_COLOURS = {Status.PASS: "#1a7f37", Status.FAIL: "#cf222e", Status.WARN: "#9a6700",
                  Status.SKIP: "#6e7781", Status.CRASH: "#8250df"}
SEVERITY_COLOURS = {"error": "#cf222e", "warning": "#9a6700", "info": "#0969da"}

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
       margin: 24px auto; max-width: 1100px; padding: 0 16px; background: #ffffff; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px;
     border-bottom: 1px solid #d0d7de; padding-bottom: 4px; } h3 { font-size: 15px; }
code, pre, .tokens { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
                     font-size: 13px; }
.meta { color: #59636e; margin: 0; } .verdict { font-size: 15px; margin: 8px 0 0; }
.finding { border: 1px solid #d0d7de; border-left-width: 5px; border-radius: 6px;
           padding: 8px 12px; margin: 10px 0; }
.finding .head { font-weight: 600; } .finding .loc { color: #0550ae; margin-left: 8px; }
.finding p { margin: 6px 0; } .fix { color: #1a7f37; } .fix b { color: #116329; }
.sev { display: inline-block; min-width: 64px; font-weight: 700; }
details pre { white-space: pre-wrap; word-break: break-all; background: #f6f8fa;
              padding: 8px; border-radius: 6px; }
table { border-collapse: collapse; margin: 8px 0; } caption { text-align: left;
        font-weight: 600; padding: 4px 0; }
th, td { border-bottom: 1px solid #d8dee4; padding: 3px 10px; text-align: left;
         vertical-align: top; } th { background: #f6f8fa; }
td.mark { font-weight: 700; } tr.skip td { color: #6e7781; }
.tokenview { margin: 12px 0; } .tokenview figcaption { font-weight: 600; margin-bottom: 4px; }
.tokens { line-height: 1.9; white-space: pre-wrap; }
.tok { padding: 1px 2px; margin-right: 2px; border-radius: 3px; }
.legend { margin-top: 4px; color: #59636e; }
"""


def html_page(report: Report, *, title: str, version: str, exit_code: int | None = None) -> str:
    """The page: head, findings, checks, views. `exit_code` if the command's differs from the
    report's own (the reference runs)."""
    code = report.exit_code if exit_code is None else exit_code
    token_css = "".join(f".tok.{k} {{ background: {bg}; color: {fg}; }}\n"
                        for k, (bg, fg) in TOKEN_COLOURS.items())
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        f"<style>{STYLE}{token_css}</style></head><body>",
        "<header><h1>loradoctor</h1>", f'<p class="meta">{escape(title)}</p>',
        f'<p class="meta">loradoctor {escape(version)} · {escape(report.command)}</p>',
        _verdict(report, code), "</header>",
        _findings(report), _checks(report), _views(report), "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def write_html(path: str | Path, page: str) -> Path:
    """Write the page (UTF-8); an unwritable path is an input error (exit 2)."""
    target = Path(path)
    try:
        target.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"--html {path}: cannot be written ({exc.strerror})") from None
    return target


def _verdict(report: Report, code: int) -> str:
    counts = severity_counts(report)
    words = ", ".join(
        f'<b style="color: {SEVERITY_COLOURS[s.value]}">{escape(w)}</b>' for s, w in counts
    ) or '<b style="color: #1a7f37">no problems found</b>'
    colour = "#cf222e" if code else "#1a7f37"
    return (f'<p class="verdict">{words} · {escape(checks_count(report))} · '
            f'<b style="color: {colour}">exit {code}</b></p>')


def _findings(report: Report) -> str:
    if not report.findings:
        return ""
    cards = [_finding(f) for f in report.findings]
    return "<section id=\"findings\"><h2>Findings</h2>\n" + "\n".join(cards) + "</section>"


def _finding(f: Finding) -> str:
    colour = SEVERITY_COLOURS[f.severity.value]
    loc = f'<code class="loc">{escape(f.location)}</code>' if f.location else ""
    out = [f'<article class="finding {f.severity.value}" style="border-left-color: {colour}">',
           f'<div class="head"><span class="sev" style="color: {colour}">'
           f'{f.severity.value}</span>{escape(f.code)} {escape(f.name)}{loc}</div>',
           f'<p class="message">{escape(f.message)}</p>']
    if f.fix:
        out.append(f'<p class="fix"><b>fix:</b> {escape(f.fix)}</p>')
    if f.evidence:
        evidence = json.dumps(jsonable(f.evidence), ensure_ascii=False, indent=1)
        out.append(f"<details><summary>evidence</summary><pre>{escape(evidence)}</pre>"
                   "</details>")
    out.append("</article>")
    return "\n".join(out)


def _checks(report: Report) -> str:
    if not report.results:
        return ""
    rows = []
    for r in report.results:
        mark, _ = MARKS[r.status]
        rows.append(f'<tr class="{r.status.value}"><td class="mark" style="color: '
                    f'{STATUS_COLOURS[r.status]}">{mark}</td><td>{escape(r.code)}</td>'
                    f"<td>{escape(r.name)}</td><td>{r.status.value}</td>"
                    f"<td>{escape(r.summary or '')}</td></tr>")
    return ('<section id="checks"><h2>Checks</h2><table class="checks"><thead><tr><th></th>'
            "<th>code</th><th>name</th><th>status</th><th>measured</th></tr></thead><tbody>\n"
            + "\n".join(rows) + "</tbody></table></section>")


def _views(report: Report) -> str:
    blocks = [_result_views(r) for r in report.results if r.views]
    if report.views:
        blocks.append("".join(view_html(v) for v in report.views))
    if not blocks:
        return ""
    return '<section id="views"><h2>Views</h2>\n' + "\n".join(blocks) + "</section>"


def _result_views(result: CheckResult) -> str:
    return (f"<h3>{escape(result.code)} {escape(result.name)}</h3>\n"
            + "\n".join(view_html(v) for v in result.views))


def view_html(view) -> str:
    if isinstance(view, TokenView):
        return token_view_html(view)
    if isinstance(view, Table):
        return table_html(view)
    if isinstance(view, Curve):
        return curve_svg(view)
    return f"<pre>{escape(str(view))}</pre>"


def token_view_html(view: TokenView) -> str:
    """The tokens as spans of their class; a token holding a newline ends its line."""
    spans = []
    for token, kind in zip(view.tokens, token_kinds(view)):
        shown = shown_token(token)
        spans.append(f'<span class="tok {kind}" title="{kind}">{escape(shown)}</span>')
        if "⏎" in shown:
            spans.append("<br>")
    legend = " ".join(f'<span class="tok {k}">{escape(TOKEN_LEGEND[k])}</span>'
                      for k in legend_kinds(view))
    return (f'<figure class="tokenview"><figcaption>{escape(view.title)}</figcaption>'
            f'<div class="tokens">{"".join(spans)}</div>'
            f'<div class="legend">legend: {legend}</div></figure>')


def table_html(view: Table) -> str:
    head = "".join(f"<th>{escape(str(c))}</th>" for c in view.columns)
    body = "\n".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>"
                     for row in view.rows)
    return (f'<table class="data"><caption>{escape(view.title)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>")


def _cell(value) -> str:
    if value is True:
        return '<span style="color: #1a7f37">✓</span>'
    if value is False:
        return '<span style="color: #8c959f">·</span>'
    if isinstance(value, float):
        return escape(f"{value:.4g}")
    return escape(str(value))
