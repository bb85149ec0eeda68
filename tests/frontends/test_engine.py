"""The engine: findings to exit codes, crash capture, skips, selection by code prefix."""

from __future__ import annotations

import pytest

from loradoctor import engine, registry
from loradoctor.context import Memo
from loradoctor.errors import InputError
from loradoctor.findings import Report, Severity, Status
from loradoctor.rules import Outcome, SkipCheck, rule


def _rule(code, body, severity=Severity.ERROR):
    def check(ctx):
        """A test rule."""
        return body(ctx)
    return rule(code, "test-rule", command="dataset", severity=severity)(check)


def test_a_check_that_raises_becomes_a_crash_result_with_its_traceback():
    boom = _rule("LD199", lambda ctx: 1 / 0)
    report = engine.run("check-dataset", [boom], object())
    (result,) = report.results
    assert result.status is Status.CRASH
    assert "ZeroDivisionError" in result.traceback
    assert result.findings[0].code == "LD001"
    assert "LD199 test-rule crashed: ZeroDivisionError" in result.findings[0].message
    assert report.exit_code == 1


def test_other_checks_still_run_after_a_crash():
    boom = _rule("LD198", lambda ctx: 1 / 0)
    fine = _rule("LD197", lambda ctx: Outcome(summary="measured 3 things"))
    report = engine.run("check-dataset", [boom, fine], object())
    assert [r.status for r in report.results] == [Status.CRASH, Status.PASS]


def test_an_input_error_is_not_swallowed_as_a_crash():
    bad = _rule("LD196", lambda ctx: (_ for _ in ()).throw(InputError("data x.jsonl:3: bad")))
    with pytest.raises(InputError):
        engine.run("check-dataset", [bad], object())


def test_status_follows_the_worst_severity_and_exit_code_follows_errors():
    warn = _rule("LD195", lambda ctx: [warn.finding("w", severity=Severity.WARNING)],
                 Severity.WARNING)
    info = _rule("LD194", lambda ctx: [info.finding("i", severity=Severity.INFO)], Severity.INFO)
    report = engine.run("check-dataset", [warn, info], object())
    assert [r.status for r in report.results] == [Status.WARN, Status.PASS]
    assert report.exit_code == 0
    err = _rule("LD193", lambda ctx: [err.finding("e")])
    assert engine.run("check-dataset", [err], object()).exit_code == 1


def test_a_skipped_check_records_its_reason_and_only_environment_skips_make_a_finding():
    def needs_gpu(ctx):
        raise SkipCheck("no CUDA device", environment=True)

    def needs_flag(ctx):
        raise SkipCheck("needs --dataset")
    a, b = _rule("LD192", needs_gpu), _rule("LD191", needs_flag)
    report = engine.run("check-dataset", [a, b], object())
    assert [r.status for r in report.results] == [Status.SKIP, Status.SKIP]
    assert report.results[0].findings[0].code == "LD002"
    assert report.results[1].findings == []
    assert report.results[1].summary == "needs --dataset"
    assert report.exit_code == 0


def test_report_json_has_the_contract_keys_and_strict_json_numbers():
    nan = _rule("LD190", lambda ctx: [nan.finding("loss is nan", evidence={"loss": float("nan")})])
    data = engine.run("check-dataset", [nan], object()).to_dict("9.9")
    assert set(data) == {"tool", "version", "command", "findings", "checks", "summary"}
    assert data["findings"][0]["evidence"] == {"loss": "nan"}
    assert set(data["checks"][0]) >= {"code", "name", "status", "duration_s"}
    assert data["summary"]["exit_code"] == 1


def test_select_and_ignore_work_by_code_prefix():
    rules = registry.ALL_RULES
    only_ld1 = registry.select(rules, ["LD1"])
    assert only_ld1 and all(r.code.startswith("LD1") for r in only_ld1)
    without = registry.select(rules, None, ["LD100"])
    assert "LD100" not in [r.code for r in without]
    assert len(without) == len(rules) - 1
    with pytest.raises(InputError):
        registry.select(rules, ["XX1"])


def test_the_registry_is_an_explicit_list_of_unique_documented_codes():
    codes = [r.code for r in registry.ALL_RULES]
    assert len(codes) == len(set(codes))
    for r in registry.ALL_RULES:
        assert r.code[:2] == "LD" and len(r.code) == 5 and r.code[2:].isdigit()
        assert r.name == r.name.lower() and " " not in r.name
        for section in ("## What it does", "## Why is this bad?", "## Example", "## Use instead"):
            assert section in r.doc, f"{r.code} docstring lacks {section!r}"


def test_memo_computes_once_and_replays_the_same_exception():
    calls = []

    class Ctx(Memo):
        pass
    ctx = Ctx()
    assert ctx.memo("k", lambda: calls.append(1) or 42) == 42
    assert ctx.memo("k", lambda: calls.append(1) or 43) == 42
    assert calls == [1]
    with pytest.raises(ZeroDivisionError):
        ctx.memo("bad", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        ctx.memo("bad", lambda: 0)


def test_an_empty_report_exits_zero():
    assert Report("check-model").exit_code == 0
