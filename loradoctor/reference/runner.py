"""Running and showing the reference training runs (`loradoctor reference [NAME]`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..version import __version__
from ..findings import CheckResult, Curve, Report, Status, Table, jsonable
from . import select_runs


def run_reference(name: str | None, as_json: bool = False, plot: str | None = None,
                  html: str | None = None) -> int:
    """Run the reference runs, print them (or one JSON object), and with `html` write the
    page of `reference_report`."""
    from rich.text import Text

    from ..render import console, render_view

    runs = select_runs(name)
    if plot is not None:
        from .plot import require_matplotlib
        require_matplotlib()  # before minutes of training, not after
    out = console()
    err = console(stderr=True)
    results, outcomes = [], []
    for run in runs:
        start = time.perf_counter()
        if err.is_terminal and not as_json:
            with err.status(f"reference run {run.name} ..."):
                outcome = run.run()
        else:
            outcome = run.run()
        elapsed = time.perf_counter() - start
        outcomes.append((run, outcome, elapsed))
        results.append({"name": run.name, "title": run.title, "reproduced": outcome.reproduced,
                        "curves": outcome.curves, "flagged": outcome.flagged,
                        "verdict": outcome.verdict, "marks": outcome.marks,
                        "duration_s": round(elapsed, 2)})
        if plot is not None:
            from .plot import plot_run
            results[-1]["plot"] = str(plot_run(run.name, run.title, outcome,
                                               Path(plot) / f"{run.name}.png"))
        if as_json:
            continue
        mark, style = ("✓", "green") if outcome.reproduced else ("✗", "bold red")
        out.print(Text.assemble((f"{mark} ", style), (run.name, "bold"), f"  {run.title}",
                                (f"  {elapsed:.1f}s", "dim")))
        out.print(render_view(Curve(f"  loss over {max(map(len, outcome.curves.values()), default=0)}"
                                    f" real AdamW steps", outcome.curves)))
        for pipeline, codes in outcome.flagged.items():
            flagged = ", ".join(codes) if codes else "nothing (clean)"
            out.print(Text.assemble(f"  loradoctor {outcome.flagged_when} on ", (pipeline, "bold"),
                                    ": ", (flagged, "red" if codes else "green")))
        for line in outcome.verdict:
            out.print(Text(f"  {line}"))
        if plot is not None:
            out.print(Text.assemble("  plot: ", (results[-1]["plot"], "cyan")))
        out.print()
    ok = all(r["reproduced"] for r in results)
    if html is not None:
        from ..render_html import html_page, write_html
        page = html_page(reference_report(outcomes), title="loradoctor reference runs",
                         version=__version__, exit_code=0 if ok else 1)
        print(f"loradoctor: HTML report written to {write_html(html, page)}", file=sys.stderr)
    if as_json:
        sys.stdout.write(json.dumps(jsonable({"tool": "loradoctor", "version": __version__,
                                              "command": "reference", "runs": results,
                                              "summary": {"runs": len(results),
                                                          "reproduced": sum(r["reproduced"] for r in results)}}),
                                    ensure_ascii=False) + "\n")
    elif not results:
        out.print("no reference runs yet")
    return 0 if ok else 1


def reference_report(outcomes: list) -> Report:
    """The runs as a Report (for the HTML page): one result per run, passed when it
    reproduced its claim, with its loss curves and what loradoctor flagged on each pipeline."""
    report = Report("reference")
    for run, outcome, elapsed in outcomes:
        steps = max(map(len, outcome.curves.values()), default=0)
        flagged = Table(f"loradoctor {outcome.flagged_when}", ["pipeline", "flagged"],
                        [[p, ", ".join(c) if c else "nothing (clean)"]
                         for p, c in outcome.flagged.items()])
        report.results.append(CheckResult(
            run.name, run.title, Status.PASS if outcome.reproduced else Status.FAIL,
            duration_s=elapsed, summary=" ".join(outcome.verdict) or None,
            views=[Curve(f"loss over {steps} real AdamW steps", outcome.curves), flagged]))
    return report
