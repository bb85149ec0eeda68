"""Reference runs as pictures: `loradoctor reference [NAME] --plot DIR` writes one PNG per run.

Each picture holds the loss per step of every pipeline of the run (the buggy ones, in warm
colours, beside the fixed ones), the step where each went wrong marked with a dashed line and a
note, and what
loradoctor said about each pipeline before training. Where it went wrong comes from the run
(`RunOutcome.marks`, for a start that is damaged but trains on) or from the curve itself: the
first NaN or inf loss, a loss logged as exactly 0 after real values, a loss that never moves,
a pipeline that crashed before its first step. A non-finite loss cannot be drawn as a point,
so such steps are crosses along the top of the plot.

matplotlib is an optional extra (`pip install 'loradoctor[plot]'`), imported only here, with
the non-interactive Agg backend (nothing opens a window).
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import InputError
from .runs import RunOutcome

# Pipelines that went wrong are drawn in warm colours (their marks in the same colour), the
# ones that train in cool colours.
WRONG = ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"]
RIGHT = ["#2ca02c", "#1f77b4", "#17becf", "#7f7f7f", "#bcbd22"]


def require_matplotlib() -> None:
    """Fail fast (exit 2) before any run when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install 'loradoctor[plot]'") from None


def wrong_steps(outcome: RunOutcome) -> dict[str, tuple[int, str]]:
    """pipeline -> (step index, what went wrong there), from the run's marks and its curves."""
    marks: dict[str, tuple[int, str]] = {}
    for name, values in outcome.curves.items():
        if name in outcome.marks:
            step, what = outcome.marks[name]
            marks[name] = (int(step), what)
            continue
        finite = [isinstance(v, (int, float)) and math.isfinite(v) for v in map(_num, values)]
        if not values:
            said = next((line.split(": ", 1)[1] for line in outcome.verdict
                         if line.startswith(f"{name}: ")), "")
            marks[name] = (0, _short(said) if said else "crashed before its first step")
        elif not all(finite):
            k = finite.index(False)
            word = "nan" if math.isnan(_num(values[k])) else "inf"
            marks[name] = (k, f"loss {word} from step {k + 1}")
        elif len(values) > 1 and len(set(values)) == 1:
            marks[name] = (0, "flat: the loss never moves")
        elif any(_num(v) == 0.0 for v in values) and _num(values[0]) != 0.0:
            k = next(i for i, v in enumerate(values) if _num(v) == 0.0)
            marks[name] = (k, f"logged as 0 from step {k + 1}")
    return marks


def plot_run(name: str, title: str, outcome: RunOutcome, path: Path) -> Path:
    """Write the run's picture to `path` (PNG) and return it."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    marks = wrong_steps(outcome)
    series = list(outcome.curves.items())
    steps = max((len(v) for _, v in series), default=1) or 1
    finite = [_num(v) for _, vs in series for v in vs if math.isfinite(_num(v))]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.01, 0.05)
    top = hi + pad * 3  # room for the crosses and the notes above the curves

    colors, wrong_n, right_n = {}, 0, 0
    for label, _ in series:
        if label in marks:
            colors[label], wrong_n = WRONG[wrong_n % len(WRONG)], wrong_n + 1
        else:
            colors[label], right_n = RIGHT[right_n % len(RIGHT)], right_n + 1

    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=110)
    try:
        for label, values in series:
            color = colors[label]
            xs = [k + 1 for k, v in enumerate(values) if math.isfinite(_num(v))]
            ys = [_num(v) for v in values if math.isfinite(_num(v))]
            flags = outcome.flagged.get(label)
            said = f" (loradoctor: {', '.join(flags) if flags else 'clean'})" \
                if flags is not None else ""
            ax.plot(xs, ys, marker="o", markersize=3.5, linewidth=1.8, color=color,
                    label=f"{label}{said}")
            bad = [k + 1 for k, v in enumerate(values) if not math.isfinite(_num(v))]
            if bad:
                ax.scatter(bad, [top - pad] * len(bad), marker="x", s=40, color=color,
                           linewidths=2, zorder=5)
            if not values:  # crashed before its first step: one cross where step 1 would be
                ax.scatter([1], [top - pad], marker="X", s=70, color=color, zorder=5)
        for row, (label, (step, what)) in enumerate(marks.items()):
            x = step + 1
            ax.axvline(x, color=colors[label], linestyle="--", linewidth=1.2, alpha=0.8)
            ax.annotate(f"{label}: {what}", xy=(x, top - pad * (1.6 + 0.9 * row)),
                        xytext=(6, 0), textcoords="offset points", color=colors[label],
                        fontsize=8, va="center")
        ax.set_xlim(0.5, max(steps, 1) + 0.5)
        ax.set_ylim(lo - pad, top)
        ax.set_xticks(range(1, steps + 1))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        ax.set_title(f"loradoctor reference {name}: {title}", fontsize=11, loc="left")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
        note = "x: loss nan/inf at that step (drawn at the top)" if any(
            not math.isfinite(_num(v)) for _, vs in series for v in vs) else ""
        if note:
            fig.text(0.99, 0.01, note, ha="right", va="bottom", fontsize=7, color="#555555")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def _num(v) -> float:
    """Loss values come back from JSON as numbers or the strings "nan"/"inf"."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _short(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
