"""loradoctor: catches silent LoRA fine-tuning bugs before training.

The public API: the data a check produces, and the one engine that runs checks.
"""

from .errors import InputError
from .findings import CheckResult, Finding, Report, Severity, Status

__version__ = "0.1.0"

__all__ = ["CheckResult", "Finding", "InputError", "Report", "Severity", "Status", "__version__"]
