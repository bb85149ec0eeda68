"""The explicit list of every rule, selection by code prefix (`--select LD1`, `--ignore LD401`),
and which rules apply to a model built without weight values or with offloaded weights.

Order matters: it is the order of the doctor view. A new rule is added to its module's
`RULES` list; nothing registers itself by import side effect.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from .checks import fuzz, labels, masking, numerics, persistence, records, tool, wiring
from .checks import collation
from .checks import saved_adapter
from .checks import initialisation
from .checks import training_run
from .errors import InputError
from .rules import Rule, SkipCheck

TOOL_RULES: list[Rule] = list(tool.RULES)
# `--fuzz` failures land under the masking rule they break (checks/fuzz.py), hence the wrap.
DATASET_RULES: list[Rule] = [*records.RULES, *fuzz.with_fuzz(masking.RULES), *labels.RULES,
                             *collation.RULES, *fuzz.RULES]
MODEL_RULES: list[Rule] = [*wiring.RULES, *initialisation.RULES, *numerics.RULES,
                           *persistence.RULES]
ADAPTER_RULES: list[Rule] = list(saved_adapter.RULES)  # check-adapter: the saved artifact
# Read step by step while training runs (watchdog.py), not by a check-* command.
WATCH_RULES: list[Rule] = list(training_run.RULES)
ALL_RULES: list[Rule] = [*TOOL_RULES, *DATASET_RULES, *MODEL_RULES, *ADAPTER_RULES, *WATCH_RULES]
# What a family's rules do that offloaded weights (meta placeholders backed by files) do not
# allow, for the rules that declare `runs_offloaded=False`.
OFFLOAD_LIMITS = {"LD3": "casts the whole model to fp16 / bf16 copies",
                  "LD5": "writes into the base weights in place and loads a second copy"}


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
    """Keep rules whose code starts with a `select` prefix (all if none), minus `ignore`
    prefixes."""
    for prefix in [*(select or []), *(ignore or [])]:
        if not prefix.startswith("LD") or not prefix[2:].isdigit() and prefix[2:]:
            raise InputError(f"code prefix {prefix!r}: expected LD followed by digits (LD1, LD401)")
    chosen = [r for r in rules if not select or any(r.code.startswith(p) for p in select)]
    return [r for r in chosen if not any(r.code.startswith(p) for p in (ignore or []))]


def static_codes() -> list[str]:
    """The check-model rules that run without weight values (static mode), in report order."""
    return [r.code for r in MODEL_RULES if not r.needs_values]


NO_TOKENIZER = ("needs a tokenizer with a chat template (the truth of which tokens to supervise);"
                " give it: LoraDoctorCallback(tokenizer=...), Trainer(processing_class=...) or "
                "tokenizer=...")


def applicable(rules: list[Rule], *, static: bool = False, offload: bool = False,
               tokenizer: bool = True) -> list[Rule]:
    """`rules` as they run here: on a model without weight values (static mode) a rule that
    needs values becomes a skip that says why, on offloaded weights so does a rule that cannot
    run on them, and on labels without a tokenizer a rule that needs the template's truth; the
    others are kept as they are."""
    out = []
    for r in rules:
        if not tokenizer and r.needs_tokenizer:
            r = _skipping(r, lambda ctx: NO_TOKENIZER)
        elif static and r.needs_values:
            r = _skipping(r, lambda ctx: f"static mode ({ctx.static_why}): this rule needs "
                                         f"weight values (a forward pass or the adapters' values)")
        elif offload and not r.runs_offloaded:
            why = OFFLOAD_LIMITS.get(r.family, "needs every weight in memory")
            r = _skipping(r, lambda ctx, why=why: f"offloaded weights (device_map=\"auto\"): "
                                                  f"this rule {why}, which offloaded weights do "
                                                  f"not allow")
        out.append(r)
    return out


def _skipping(rule: Rule, reason: Callable[[Any], str]) -> Rule:
    """`rule` with a check that skips, saying `reason(ctx)`; its documentation is kept."""
    def check(ctx):
        raise SkipCheck(reason(ctx))
    check.__doc__ = rule.check.__doc__
    return dataclasses.replace(rule, check=check)
