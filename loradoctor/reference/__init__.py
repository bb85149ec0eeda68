"""Reference training runs: short real runs where a bug visibly happens and the fix trains.

Each run module exposes `RUNS`, an explicit list of `ReferenceRun`. A run trains real models
with a real optimizer (tiny models, a few steps) and returns a `RunOutcome`: loss curves per
pipeline, what loradoctor flagged on each pipeline *before* training, and whether the run
reproduced what its docstring claims (`reproduced`). `loradoctor reference` exits 1 when a
run did not reproduce, so the claim is checked, not just told.
"""

from __future__ import annotations

from ..errors import InputError
from .runs import ReferenceRun, RunOutcome

__all__ = ["ReferenceRun", "RunOutcome", "all_runs", "select_runs"]


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
