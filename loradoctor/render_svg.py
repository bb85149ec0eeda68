"""Loss curves as inline SVG, for the HTML page: one line per pipeline, NaN/inf marked.

A `Curve` holds loss per step for each pipeline of a reference run (the buggy and the fixed,
NaN and inf kept). The plot scales every finite value into one box; a non-finite step is a red
cross on the top edge, where the line breaks off, so a run that went NaN reads as such.
"""

from __future__ import annotations

import math
from html import escape

from .findings import Curve

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 150, 14, 30  # margins: axis labels left, legend right
PALETTE = ("#cf222e", "#1a7f37", "#0969da", "#8250df", "#9a6700", "#1b7c83")
BAD = "#cf222e"


def curve_svg(view: Curve) -> str:
    """The curve as a `<figure>` holding one `<svg>` (no external reference)."""
    values = [v for series in view.series.values() for v in series if _finite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    steps = max((len(s) for s in view.series.values()), default=1)
    box_w, box_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + (box_w * i / (steps - 1) if steps > 1 else box_w / 2)

    def y(v: float) -> float:
        return TOP + box_h * (hi - v) / (hi - lo)

    parts = [_axes(lo, hi, steps, box_w, box_h)]
    for n, (name, series) in enumerate(view.series.items()):
        colour = PALETTE[n % len(PALETTE)]
        parts.extend(_series(series, colour, x, y))
        parts.append(_legend_entry(n, name, colour, series))
    return (f'<figure class="curve"><figcaption>{escape(view.title.strip())}</figcaption>'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(view.title)}">'
            + "".join(parts) + "</svg></figure>")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _axes(lo: float, hi: float, steps: int, box_w: float, box_h: float) -> str:
    bottom = TOP + box_h
    return (f'<rect x="{LEFT}" y="{TOP}" width="{box_w}" height="{box_h}" fill="#ffffff" '
            f'stroke="#d0d7de"/>'
            f'<text x="{LEFT - 6}" y="{TOP + 10}" font-size="11" text-anchor="end" '
            f'fill="#59636e">{hi:.4g}</text>'
            f'<text x="{LEFT - 6}" y="{bottom}" font-size="11" text-anchor="end" '
            f'fill="#59636e">{lo:.4g}</text>'
            f'<text x="{LEFT}" y="{bottom + 16}" font-size="11" fill="#59636e">step 1</text>'
            f'<text x="{LEFT + box_w}" y="{bottom + 16}" font-size="11" text-anchor="end" '
            f'fill="#59636e">step {steps}</text>'
            f'<text x="12" y="{TOP + box_h / 2}" font-size="11" fill="#59636e" '
            f'transform="rotate(-90 12 {TOP + box_h / 2})" text-anchor="middle">loss</text>')


def _series(series: list[float], colour: str, x, y) -> list[str]:
    """Polylines through the finite runs of steps, a cross at each non-finite one."""
    out, run = [], []
    for i, v in enumerate(series):
        if _finite(v):
            run.append(f"{x(i):.1f},{y(v):.1f}")
            continue
        if run:
            out.append(_polyline(run, colour))
            run = []
        cx, cy = x(i), TOP + 4
        out.append(f'<path d="M{cx - 4:.1f},{cy - 4:.1f} L{cx + 4:.1f},{cy + 4:.1f} '
                   f'M{cx - 4:.1f},{cy + 4:.1f} L{cx + 4:.1f},{cy - 4:.1f}" stroke="{BAD}" '
                   f'stroke-width="2"><title>step {i + 1}: {v}</title></path>')
    if run:
        out.append(_polyline(run, colour))
    return out


def _polyline(points: list[str], colour: str) -> str:
    if len(points) == 1:
        px, py = points[0].split(",")
        return f'<circle cx="{px}" cy="{py}" r="2.5" fill="{colour}"/>'
    return (f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" '
            f'stroke-width="2"/>')


def _legend_entry(n: int, name: str, colour: str, series: list[float]) -> str:
    lx, ly = WIDTH - RIGHT + 12, TOP + 12 + 34 * n
    last = series[-1] if series else float("nan")
    tail = f"last {last:.4g}" if _finite(last) else f"last {last}"
    return (f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 18}" y2="{ly - 4}" stroke="{colour}" '
            f'stroke-width="3"/><text x="{lx + 24}" y="{ly}" font-size="12" '
            f'fill="#1f2328">{escape(name)}</text><text x="{lx + 24}" y="{ly + 14}" '
            f'font-size="11" fill="#59636e">{escape(tail)}</text>')
