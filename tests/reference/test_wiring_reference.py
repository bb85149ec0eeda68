"""The wiring and init reference runs: real AdamW steps where each bug visibly happens, the
fix trains, and loradoctor flagged the buggy pipeline (and only it) before training.
"""

from __future__ import annotations

import json
import math

import pytest

from loradoctor.reference import select_runs
from loradoctor.reference.wiring import STEPS, run_closure, run_init

pytestmark = pytest.mark.slow  # reference runs: real training steps


def test_the_closure_bug_crashes_or_trains_garbage_and_the_fix_trains():
    outcome = run_closure()
    assert outcome.reproduced, outcome.verdict
    assert outcome.curves["closure bug"] == []  # crashed before the first loss
    fixed = outcome.curves["fixed (default arguments)"]
    assert len(fixed) == STEPS and fixed[-1] < fixed[0]
    garbage = outcome.curves["closure bug, q/o only"]
    assert len(garbage) == STEPS and all(map(math.isfinite, garbage))  # runs: silently wrong
    assert "LD201" in outcome.flagged["closure bug"]
    assert "LD201" in outcome.flagged["closure bug, q/o only"]
    assert outcome.flagged["fixed (default arguments)"] == []
    assert outcome.flagged["fixed, q/o only"] == []
    crash_line = outcome.verdict[0]
    assert "crashed at step 0: RuntimeError: mat1 and mat2 shapes cannot be multiplied" in crash_line
    assert "runs the forward of model.layers.1.mlp.down_proj (LD201)" in crash_line
    assert "only 1 of 4 adapters ever changes (model.layers.1.self_attn.o_proj" in outcome.verdict[2]


def test_a_random_b_damages_the_start_and_a_zero_a_freezes_the_adapter():
    outcome = run_init()
    assert outcome.reproduced, outcome.verdict
    correct, b_random, a_zero = (outcome.curves[k] for k in (
        "correct init (A Kaiming, B zero)", "B random", "A zeroed, B zero"))
    assert correct[-1] < correct[0]
    assert len(set(a_zero)) == 1  # the loss does not move at all
    assert outcome.flagged["correct init (A Kaiming, B zero)"] == []
    assert {"LD401", "LD403"} <= set(outcome.flagged["B random"])
    assert "LD402" in outcome.flagged["A zeroed, B zero"]
    assert "0 of 14 adapters changed" in outcome.verdict[2]


def test_the_reference_command_lists_both_runs_and_reports_them_as_json(cli):
    assert [r.name for r in select_runs("closure")] == ["closure"]
    result = cli("reference", "init", "--json")
    assert result.code == 0, result.err
    (run,) = json.loads(result.out)["runs"]
    assert run["name"] == "init" and run["reproduced"] is True
