"""The masking reference run: real AdamW steps on a tiny Qwen3 with the real Qwen3 tokenizer."""

from __future__ import annotations

import json
import math

import pytest

from loradoctor.reference import select_runs

pytestmark = pytest.mark.slow  # a reference run: real training steps


def test_the_buggy_dataset_trains_to_nan_and_the_fixed_one_trains(cli):
    (run,) = select_runs("masking")
    assert "bos_token" in run.doc
    result = cli("reference", "masking", "--json")
    assert result.code == 0, result.err
    (outcome,) = json.loads(result.out)["runs"]
    assert outcome["name"] == "masking" and outcome["reproduced"] is True
    buggy = [float(v) for v in outcome["curves"]["buggy LoRADataset"]]
    fixed = outcome["curves"]["fixed"]
    assert len(buggy) >= 3 and all(math.isnan(v) for v in buggy)
    assert all(math.isfinite(v) for v in fixed) and fixed[-1] < fixed[0]
    assert outcome["flagged"] == {"buggy LoRADataset": ["LD101", "LD102"], "fixed": []}
    assert any("0 supervised labels" in line for line in outcome["verdict"])
