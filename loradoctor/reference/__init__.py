"""Reference training runs: short real runs where a bug visibly happens and the fix trains.

Each run module exposes `RUNS`, an explicit list of `ReferenceRun`. A run trains real models
with a real optimizer (tiny models, a few steps) and returns a `RunOutcome`: loss curves per
pipeline, what loradoctor flagged on each pipeline *before* training, and whether the run
reproduced what its docstring claims (`reproduced`). `loradoctor reference` exits 1 when a
run did not reproduce, so the claim is checked, not just told.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

from ..errors import InputError


@dataclass
class RunOutcome:
    curves: dict[str, list[float]]                # pipeline -> loss per step (nan/inf kept)
    flagged: dict[str, list[str]] = field(default_factory=dict)  # pipeline -> codes found
    verdict: list[str] = field(default_factory=list)  # measured sentences, one per line
    reproduced: bool = True
    # pipeline -> (step index, what went wrong there), where the curve alone does not show it
    # (a damaged start trains on); NaN, a crash or a flat loss are found from the curve itself.
    marks: dict[str, tuple[int, str]] = field(default_factory=dict)
    # When `flagged` was measured: most runs check the pipeline before training; check-adapter
    # runs on the adapter a run saved, the callback's gate at train start.
    flagged_when: str = "before training"


@dataclass(frozen=True)
class ReferenceRun:
    name: str
    title: str
    run: Callable[[], RunOutcome]

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.run.__doc__ or "")


def all_runs() -> list[ReferenceRun]:
    from . import adapter, masking, numerics, watchdog, wiring  # explicit: one module per family
    return [*masking.RUNS, *wiring.RUNS, *numerics.RUNS, *watchdog.RUNS, *adapter.RUNS]


def select_runs(name: str | None) -> list[ReferenceRun]:
    runs = all_runs()
    if not name:
        return runs
    chosen = [r for r in runs if r.name == name or r.name.startswith(name)]
    if not chosen:
        names = ", ".join(r.name for r in runs) or "none yet"
        raise InputError(f"no reference run {name!r}; available: {names}")
    return chosen
