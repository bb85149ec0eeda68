"""The numerics reference runs: fp16 failing for real where the fix trains, flagged beforehand."""

from __future__ import annotations

import json
import math

import pytest

from loradoctor.reference import numerics

pytestmark = pytest.mark.slow  # reference runs: real training steps


def test_fp16_overflows_at_a_named_module_where_bf16_trains():
    outcome = numerics.fp16_overflow()
    assert outcome.reproduced, outcome.verdict
    fp16, bf16 = outcome.curves["fp16 base"], outcome.curves["bf16 base"]
    assert len(fp16) == len(bf16) == numerics.STEPS
    assert not any(math.isfinite(x) for x in fp16)
    assert all(math.isfinite(x) for x in bf16) and bf16[-1] < bf16[0]
    assert outcome.flagged == {"fp16 base": ["LD301"], "bf16 base": []}
    text = "\n".join(outcome.verdict)
    assert "first inf at model.layers.1.mlp.down_proj" in text
    assert "SmolLM2-135M" in text and "headroom" in text


def test_pure_fp16_adamw_breaks_where_fp32_master_weights_train():
    outcome = numerics.fp16_adamw()
    assert outcome.reproduced, outcome.verdict
    bad, good = outcome.curves["fp16 adapters"], outcome.curves["fp32 adapters"]
    assert math.isfinite(bad[0]) and not any(math.isfinite(x) for x in bad[1:])
    assert all(math.isfinite(x) for x in good) and good[-1] < good[0]
    assert "LD305" in outcome.flagged["fp16 adapters"]
    assert outcome.flagged["fp32 adapters"] == []


def test_the_reference_command_runs_the_numerics_runs(cli):
    result = cli("reference", "fp16-adamw", "--json")
    assert result.code == 0, result.err
    (run,) = json.loads(result.out)["runs"]
    assert run["name"] == "fp16-adamw" and run["reproduced"]
