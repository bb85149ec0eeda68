"""Helpers shared by the check-model tests: run the real CLI with --json and pick findings."""

from __future__ import annotations

import json


def check_model(cli, model_dir, spec=None, *extra, select: str):
    """Run `check-model --json` in-process; no check may crash. Returns (exit code, JSON)."""
    args = ["check-model", "--model", model_dir, "--select", select, "--json", *extra]
    if spec:
        args[3:3] = ["--apply", spec]
    result = cli(*args)
    assert result.code in (0, 1), result.err
    data = json.loads(result.out)
    assert not [c for c in data["checks"] if c["status"] == "crash"], data["findings"]
    return result.code, data


def found(data, code, severity=None):
    """The findings of one rule (and severity) in a JSON report."""
    return [f for f in data["findings"] if f["code"] == code
            and (severity is None or f["severity"] == severity)]
