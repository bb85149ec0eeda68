"""The explicit list of every rule, and selection by code prefix (`--select LD1`, `--ignore LD401`).

Order matters: it is the order of the doctor view. A new rule is added to its module's
`RULES` list; nothing registers itself by import side effect.
"""

from __future__ import annotations

from .checks import fuzz, labels, masking, numerics, persistence, records, tool, wiring
from .checks import saved_adapter
from .checks import initialisation
from .checks import training_run
from .errors import InputError
from .rules import Rule

TOOL_RULES: list[Rule] = list(tool.RULES)
# `--fuzz` failures land under the masking rule they break (checks/fuzz.py), hence the wrap.
DATASET_RULES: list[Rule] = [*records.RULES, *fuzz.with_fuzz(masking.RULES), *labels.RULES,
                             *fuzz.RULES]
MODEL_RULES: list[Rule] = [*wiring.RULES, *initialisation.RULES, *numerics.RULES, *persistence.RULES]
ADAPTER_RULES: list[Rule] = list(saved_adapter.RULES)  # check-adapter: the saved artifact
# Read step by step while training runs (watchdog.py), not by a check-* command.
WATCH_RULES: list[Rule] = list(training_run.RULES)
ALL_RULES: list[Rule] = [*TOOL_RULES, *DATASET_RULES, *MODEL_RULES, *ADAPTER_RULES, *WATCH_RULES]


def rules_for(command: str) -> list[Rule]:
    return {"dataset": DATASET_RULES, "model": MODEL_RULES, "adapter": ADAPTER_RULES,
            "watch": WATCH_RULES}[command]


def get(code: str) -> Rule:
    for r in ALL_RULES:
        if r.code.upper() == code.upper():
            return r
    raise InputError(f"no rule {code!r}; `loradoctor rules` lists them all")


def parse_codes(text: str | None) -> list[str]:
    return [c.strip().upper() for c in (text or "").split(",") if c.strip()]


def select(rules: list[Rule], select: list[str] | None = None,
           ignore: list[str] | None = None) -> list[Rule]:
    """Keep rules whose code starts with a `select` prefix (all if none), minus `ignore` prefixes."""
    for prefix in [*(select or []), *(ignore or [])]:
        if not prefix.startswith("LD") or not prefix[2:].isdigit() and prefix[2:]:
            raise InputError(f"code prefix {prefix!r}: expected LD followed by digits (LD1, LD401)")
    chosen = [r for r in rules if not select or any(r.code.startswith(p) for p in select)]
    return [r for r in chosen if not any(r.code.startswith(p) for p in (ignore or []))]
