"""loradoctor: catches silent LoRA fine-tuning bugs before training.

The public API: `check(...)` returns a `Report`; `gate(...)` raises `UnhealthyPipeline` on an
error; `Watchdog` watches a plain PyTorch loop. The Trainer callback is
`loradoctor.integrations.transformers.LoraDoctorCallback`. Importing this package imports
neither torch nor transformers.
"""

from .api import check, gate
from .errors import InputError, UnhealthyPipeline
from .findings import CheckResult, Finding, Report, Severity, Status
from .version import __version__


def __getattr__(name: str):
    if name == "Watchdog":  # imports torch: only when asked for
        from .watchdog import Watchdog
        return Watchdog
    raise AttributeError(f"module 'loradoctor' has no attribute {name!r}")


__all__ = ["CheckResult", "Finding", "InputError", "Report", "Severity", "Status",
           "UnhealthyPipeline", "Watchdog", "__version__", "check", "gate"]
