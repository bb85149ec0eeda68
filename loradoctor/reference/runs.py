"""What a reference run is and what it returns: `ReferenceRun` and `RunOutcome`."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable


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
