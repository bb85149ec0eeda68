"""The watchdog reference run: a real Trainer whose loss goes NaN mid-run behind finite logs."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("peft")

pytestmark = pytest.mark.slow  # a reference run: a real Trainer


def test_the_callback_stops_the_run_at_the_step_its_loss_goes_nan(cli):
    result = cli("reference", "watchdog", "--json")
    assert result.code == 0, result.err
    (outcome,) = json.loads(result.out)["runs"]
    assert outcome["reproduced"] is True
    own = [float(v) for v in outcome["curves"]["model loss, no callback"]]
    logged = [float(v) for v in outcome["curves"]["Trainer log, no callback"]]
    stopped = [float(v) for v in outcome["curves"]["model loss, with callback"]]
    first_nan = next(i for i, v in enumerate(own) if math.isnan(v)) + 1
    assert all(math.isfinite(v) for v in logged) and len(logged) == len(own)
    assert len(stopped) == first_nan and math.isnan(stopped[-1])
    assert any(f"stopped at step {first_nan}" in line for line in outcome["verdict"])
