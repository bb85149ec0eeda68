"""From the measured passes to a verdict per dtype, and the one-line verdict of the doctor view.

Pure functions of a `Measurement` and the options: no torch work, so the rules and the tests
can read the same verdict the report shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .passes import FP16_MAX, DtypePass, Measurement, NumericsOptions
from .recorder import ModuleStat

MARKS = {"ok": "✓", "warn": "!", "fail": "✗", "skip": "-"}


@dataclass
class DtypeVerdict:
    dtype: str
    status: str  # ok | warn | fail | skip
    reason: str = ""  # measured, short: shown in parentheses after the mark

    def text(self) -> str:
        out = f"{self.dtype} {MARKS[self.status]}"
        return f"{out} ({self.reason})" if self.reason else out


def fmt(x: float) -> str:
    """65,504-style figures for peaks; small values in 3 significant digits."""
    if x is None or not math.isfinite(x):
        return str(x)
    if abs(x) >= 1e7:
        return f"{x:.3g}"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def pct(x: float | None) -> str:
    """A share as a percentage with two significant digits (0.0016%, 2.3%, 72%)."""
    if x is None:
        return "-"
    if not math.isfinite(x):
        return str(x)
    if 0 < x * 100 < 0.001:
        return "<0.001%"
    return f"{x * 100:.2g}%" if x * 100 < 10 else f"{x * 100:.0f}%"


def times(x: float) -> str:
    """A headroom factor: 2.6x, 1,362x."""
    return f"{x:,.0f}x" if x >= 100 else f"{x:.1f}x"


def nonfinite_word(value: float) -> str:
    return "nan" if value != value else "inf"


def headroom(peak: float) -> float:
    return FP16_MAX / peak if peak > 0 else math.inf


def overflow_at(m: Measurement) -> tuple[ModuleStat, ModuleStat] | None:
    """(fp16 stat, fp32 stat) of the first module with inf/nan in fp16 and a finite fp32 output."""
    p16 = m.get("fp16")
    if p16 is None or not p16.ran or not m.fp32.ran:
        return None
    bad = p16.first_bad_forward
    if bad is None:
        return None
    ref = m.fp32.by_name.get(bad.name)
    if ref is None or not ref.finite:
        return None
    return bad, ref


def backward_overflow_at(m: Measurement,
                         dtype: str = "fp16") -> tuple[ModuleStat, ModuleStat | None] | None:
    """The first module with an inf/nan gradient in `dtype` where forward and fp32 are finite."""
    p = m.get(dtype)
    if p is None or not p.ran or p.first_bad_forward is not None or not m.fp32.ran:
        return None
    bad = p.first_bad_backward
    if bad is None:
        return None
    ref = m.fp32.by_name.get(bad.name)
    if ref is not None and ref.grad_finite is False:
        return None
    return bad, ref


def divergence(p: DtypePass, opts: NumericsOptions) -> list[str]:
    """Why `p` departs from fp32 beyond the tolerances (empty when it does not)."""
    out = []
    if p.loss_rel_diff is not None and p.loss_rel_diff > opts.loss_rtol:
        out.append(f"loss differs by {pct(p.loss_rel_diff)} (> {pct(opts.loss_rtol)})")
    if p.grad_cosine is not None and p.grad_cosine < opts.grad_cos_min:
        out.append(f"gradient cosine {p.grad_cosine:.3f} (< {opts.grad_cos_min})")
    if p.logits_rel_diff is not None and p.logits_rel_diff > opts.logits_rtol:
        out.append(f"logits differ by up to {fmt(p.logits_max_abs_diff)} "
                   f"({pct(p.logits_rel_diff)} of the largest fp32 logit, "
                   f"> {pct(opts.logits_rtol)})")
    return out


def near_limit(m: Measurement, factor: float) -> list[ModuleStat]:
    """fp32 modules whose forward peak is within `factor` of 65,504, largest first.

    A parent whose output is its child's very tensor (an MLP and its down_proj) has the same
    peak: only the first of equal peaks (the innermost module) is kept.
    """
    seen, out = set(), []
    for s in sorted(m.fp32.modules, key=lambda s: (-s.peak if s.finite else -math.inf, s.order)):
        if not s.finite or s.peak * factor < FP16_MAX or s.peak in seen:
            continue
        seen.add(s.peak)
        out.append(s)
    return out


def dtype_verdicts(m: Measurement, opts: NumericsOptions,
                   lost_fraction: float | None = None) -> list[DtypeVerdict]:
    """One verdict per dtype, fp32 first, then bf16 and fp16 where they were asked for.

    `lost_fraction` replaces fp16's share of lost gradient values when only some trainable
    parameters count (the adapters', when an unfrozen base trains too: that is LD210's cause).
    """
    out = []
    for dtype in ("fp32", "bf16", "fp16"):
        if dtype != "fp32" and dtype not in m.requested:
            continue
        p = m.get(dtype)
        if p is None or not p.ran:
            why = (p.error if p is not None else "not run") or "not run"
            out.append(DtypeVerdict(dtype, "skip", _short(why)))
            continue
        out.append(_verdict(m, p, opts, lost_fraction))
    return out


def _verdict(m: Measurement, p: DtypePass, opts: NumericsOptions,
             lost_fraction: float | None = None) -> DtypeVerdict:
    dtype = p.dtype
    bad = p.first_bad_forward
    if bad is not None:
        ref = m.fp32.by_name.get(bad.name) if dtype != "fp32" else None
        reason = f"{nonfinite_word(bad.peak)} at {bad.name}"
        if ref is not None and ref.finite:
            reason += f", fp32 peak {fmt(ref.peak)}"
            if dtype == "fp16" and ref.peak >= FP16_MAX:
                reason += f" > {fmt(FP16_MAX)}"
        return DtypeVerdict(dtype, "fail", reason)
    bad = p.first_bad_backward
    if bad is not None:
        return DtypeVerdict(dtype, "fail",
                            f"{nonfinite_word(bad.grad_peak)} gradient at {bad.name}")
    if p.loss is None or not math.isfinite(p.loss):
        return DtypeVerdict(dtype, "fail", f"loss {p.loss}")
    if dtype == "fp32":
        return DtypeVerdict(dtype, "ok")
    warn = divergence(p, opts)
    peak = m.fp32_peak
    room = headroom(peak.peak) if peak else math.inf
    if dtype == "fp16":
        if room < opts.fp16_headroom:
            warn.append(f"headroom {times(room)} to {fmt(FP16_MAX)}")
        lost = p.grad_lost_fraction if lost_fraction is None else lost_fraction
        if p.backward and lost >= opts.grad_lost_warn:
            warn.append(f"{pct(lost)} of {'adapter ' if lost_fraction is not None else ''}"
                        f"gradients underflow without a GradScaler")
    if warn:
        return DtypeVerdict(dtype, "warn", "; ".join(warn))
    if dtype == "fp16" and math.isfinite(room):
        return DtypeVerdict(dtype, "ok", f"headroom {times(room)}")
    if p.loss_rel_diff is not None:
        return DtypeVerdict(dtype, "ok", f"loss within {pct(p.loss_rel_diff)}")
    return DtypeVerdict(dtype, "ok")


def verdict_line(verdicts: list[DtypeVerdict]) -> str:
    return "trains in: " + " · ".join(v.text() for v in verdicts)


def measured_how(m: Measurement) -> str | None:
    """How the low-precision passes were measured, when not in their real kernels: the dtypes
    whose matmuls and attention ran in fp32 on their values (`emulation.py`), else None."""
    if not m.emulated:
        return None
    return f"{' and '.join(m.emulated)} emulated on CPU"


def _short(text: str, limit: int = 80) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bf16_clean(m: Measurement, opts: NumericsOptions) -> tuple[bool | None, str]:
    """Whether bf16 was measured clean on this batch, and the sentence that says so."""
    p = m.get("bf16")
    if p is None or not p.ran:
        why = "not among --dtypes" if p is None else p.error
        return None, f"bf16 not measured here ({why})"
    if not p.finite:
        bad = p.first_bad_forward or p.first_bad_backward
        where = bad.name if bad else f"loss {p.loss}"
        return False, f"bf16 also fails on this batch ({where})"
    if divergence(p, opts):
        return False, f"bf16 runs finite but departs from fp32 ({'; '.join(divergence(p, opts))})"
    return True, (f"bf16 measured clean on the same batch: loss {p.loss:.4f} vs fp32 "
                  f"{m.fp32.loss:.4f}, no inf/nan")
