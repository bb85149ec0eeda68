"""The numerics rules (LD300-LD305) through the real CLI: every rule's bad and good fixture.

The fixtures are listed in fixtures/numerics/cases.py (one model directory + LoRA code per
case); each distinct check-model invocation runs once here, with only the LD3 rules selected,
and every case that shares it is judged on its JSON report.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import defaultdict

import pytest

from ..conftest import FIXTURES, PIPELINES

MINIMIND = f"{PIPELINES / 'minimind_lora.py'}:apply_lora_default_args"


def _load_cases():
    path = FIXTURES / "numerics" / "cases.py"
    spec = importlib.util.spec_from_file_location("numerics_cases", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining a class
    spec.loader.exec_module(module)
    return module


CASES_MODULE = _load_cases()
BY_INVOCATION = defaultdict(list)
for _case in CASES_MODULE.CASES:
    BY_INVOCATION[_case.invocation].append(_case)
INVOCATIONS = list(BY_INVOCATION.items())


def _id(item) -> str:
    (model, apply, args), cases = item
    extra = [a for a in args if a not in ("rank=8", "alpha=16")]
    return "+".join(f"{c.rule}-{c.kind}" for c in cases) + f":{model}" + \
        "".join(f":{a}" for a in extra) + f":{apply.rpartition(':')[2]}"


def check_model(cli, model_dir, apply, apply_args=("rank=8", "alpha=16"), *extra, json_out=True):
    args = ["check-model", "--model", model_dir, "--apply", apply]
    for a in apply_args:
        args += ["--apply-arg", a]
    args += ["--select", "LD3", *extra]
    if json_out:
        args.append("--json")
    result = cli(*args)
    return result, (json.loads(result.out) if json_out else None)


def test_every_numerics_rule_has_a_bad_and_a_good_fixture():
    from loradoctor.checks.numerics import RULES
    kinds = defaultdict(set)
    for case in CASES_MODULE.CASES:
        kinds[case.rule].add(case.kind)
    for r in RULES:
        assert kinds[r.code] == {"bad", "good"}, r.code


@pytest.mark.parametrize("invocation", INVOCATIONS, ids=[_id(i) for i in INVOCATIONS])
def test_each_fixture_gets_exactly_the_finding_its_case_expects(cli, invocation):
    (model, apply, apply_args), cases = invocation
    model_dir = CASES_MODULE.models()[model]()
    result, report = check_model(cli, model_dir, apply, apply_args)
    assert result.code in (0, 1), result.err
    by_code = defaultdict(list)
    for f in report["findings"]:
        by_code[f["code"]].append(f)
    statuses = {c["code"]: c["status"] for c in report["checks"]}
    assert "crash" not in statuses.values(), report["findings"]
    for case in cases:
        found = by_code.get(case.rule, [])
        if case.kind == "good":
            assert not found, (case.why, found)
            assert statuses[case.rule] == "pass", (case.rule, statuses)
        else:
            assert found, (case.why, statuses, report["checks"])
            assert found[0]["severity"] == case.severity, found
            assert found[0]["message"] and found[0]["fix"]
            if case.location:
                assert found[0]["location"] == case.location
    expect_error = any(c.kind == "bad" and c.severity == "error" for c in cases)
    assert result.code == (1 if expect_error else 0)


def test_the_large_activation_model_names_the_first_inf_module_and_says_bf16_is_clean(cli):
    from loradoctor.model.numerics.specimens import large_activation_dir
    result, report = check_model(cli, large_activation_dir(), MINIMIND)
    (ld301,) = [f for f in report["findings"] if f["code"] == "LD301"]
    assert ld301["location"] == "model.layers.1.mlp.down_proj"
    assert ld301["evidence"]["fp32_peak"] > 65504
    assert ld301["evidence"]["bf16_clean"] is True
    assert "bf16 measured clean on the same batch" in ld301["fix"]
    verdict = report["summary"]["numerics"]["verdict"]
    assert verdict.startswith("trains in: fp32 ✓ · bf16 ✓")
    assert "fp16 ✗ (inf at model.layers.1.mlp.down_proj, fp32 peak" in verdict
    assert "> 65,504" in verdict


def test_the_verdict_line_is_in_the_doctor_view(cli):
    from loradoctor.model.numerics.specimens import large_activation_dir
    result, _ = check_model(cli, large_activation_dir(), MINIMIND, json_out=False)
    assert result.code == 1
    text = " ".join(result.out.split())  # the view wraps long lines
    assert "LD300 numerics-verdict trains in: fp32 ✓ · bf16 ✓" in text
    assert "fp16 ✗ (inf at model.layers.1.mlp.down_proj" in text
    assert "LD301 fp16-overflow" in text


def test_a_plain_tiny_model_trains_in_every_dtype(cli, tiny_llama_dir):
    result, report = check_model(cli, tiny_llama_dir, MINIMIND)
    assert result.code == 0
    assert not report["findings"]
    numerics = report["summary"]["numerics"]
    assert numerics["verdict"].startswith("trains in: fp32 ✓ · bf16 ✓")
    assert "fp16 ✓ (headroom" in numerics["verdict"]
    assert set(numerics["dtypes"]) == {"fp32", "bf16", "fp16"}
    assert numerics["fp16_headroom"] > 4


def test_dtypes_not_asked_for_are_skipped_as_not_applicable(cli, tiny_llama_dir):
    result, report = check_model(cli, tiny_llama_dir, MINIMIND, ("rank=8", "alpha=16"),
                                 "--dtypes", "fp32,bf16")
    assert result.code == 0
    statuses = {c["code"]: c["status"] for c in report["checks"]}
    assert statuses == {"LD300": "pass", "LD301": "skip", "LD302": "skip", "LD303": "pass",
                        "LD304": "skip", "LD305": "pass"}
    assert not [f for f in report["findings"] if f["code"] == "LD002"]  # not an environment skip
    assert "fp16" not in report["summary"]["numerics"]["verdict"]


def test_a_dtype_the_pipeline_cannot_run_in_is_a_skip_with_the_reason_not_a_crash(cli,
                                                                                tiny_llama_dir):
    apply = f"{FIXTURES / 'numerics' / 'pipelines.py'}:apply_lora_fp32_math"
    result, report = check_model(cli, tiny_llama_dir, apply)
    statuses = {c["code"]: c["status"] for c in report["checks"]}
    assert statuses["LD301"] == statuses["LD303"] == statuses["LD304"] == "skip"
    assert "crash" not in statuses.values()
    skipped = [f for f in report["findings"] if f["code"] == "LD002"]
    assert any("fp16 pass could not run" in f["message"] and "RuntimeError" in f["message"]
               for f in skipped)
    assert "fp16 -" in report["summary"]["numerics"]["verdict"]
    assert result.code == 0


def test_the_headroom_margin_is_an_option(cli):
    from loradoctor.model.numerics.specimens import low_headroom_dir
    _, default = check_model(cli, low_headroom_dir(), MINIMIND, ("rank=8", "alpha=16"),
                             "--select", "LD302")
    _, loose = check_model(cli, low_headroom_dir(), MINIMIND, ("rank=8", "alpha=16"),
                           "--select", "LD302", "--fp16-headroom", "2")
    (warning,) = default["findings"]
    assert warning["code"] == "LD302" and warning["evidence"]["factor"] == 4
    assert 2 < warning["evidence"]["headroom"] < 4
    assert warning["evidence"]["first_module_over"] == "model.layers.1.mlp.down_proj"
    assert loose["findings"] == []


def test_a_headroom_factor_of_one_or_less_is_a_usage_error(cli, tiny_llama_dir):
    result, _ = check_model(cli, tiny_llama_dir, MINIMIND, ("rank=8", "alpha=16"),
                            "--fp16-headroom", "1", json_out=False)
    assert result.code == 2
    assert "--fp16-headroom" in result.err


def test_fp32_adapters_on_an_fp16_base_are_not_flagged_but_fp16_adapters_are(cli, tiny_llama_dir):
    spec = "loradoctor.model.numerics.specimens"
    _, bad = check_model(cli, tiny_llama_dir, f"{spec}:apply_lora_fp16_adapters")
    _, good = check_model(cli, tiny_llama_dir, f"{spec}:apply_lora_fp32_adapters",
                          ("rank=8", "alpha=16", "base_dtype='fp16'"))
    (ld305,) = [f for f in bad["findings"] if f["code"] == "LD305"]
    ev = ld305["evidence"]
    assert ev["n_fp16_trainable"] == 28
    assert ev["nonfinite_after_step"] > 0.5 * ev["simulated_values"]
    assert "eps 1e-08, which is 0 in fp16" in ld305["message"]
    assert not [f for f in good["findings"] if f["code"] == "LD305"]
    ld305_good = [c for c in good["checks"] if c["code"] == "LD305"][0]
    assert "fp32: their own master weights" in ld305_good["summary"]


@pytest.mark.slow  # a separate process: a torch import of its own
def test_an_exit_code_and_pure_json_stdout_from_a_separate_process(cli_subprocess):
    from loradoctor.model.numerics.specimens import large_activation_dir
    result = cli_subprocess("check-model", "--model", large_activation_dir(), "--apply", MINIMIND,
                            "--apply-arg", "rank=8", "--apply-arg", "alpha=16", "--select",
                            "LD301", "--json")
    assert result.code == 1, result.err
    report = json.loads(result.out)
    assert [f["code"] for f in report["findings"]] == ["LD301"]


@pytest.mark.slow
def test_smollm2_reports_its_real_headroom(smollm2_dir):
    """The real SmolLM2-135M: no overflow, a headroom under 4x (a warning), bf16 close to fp32."""
    from loradoctor import engine, registry
    from loradoctor.context import ModelContext

    ctx = ModelContext(smollm2_dir, apply_spec=MINIMIND, apply_kwargs={"rank": 8, "alpha": 16},
                       dtypes=None, probe_shape=(1, 32))
    ctx.validate_inputs()
    report = engine.run("check-model", registry.select(registry.MODEL_RULES, ["LD3"]), ctx)
    statuses = {r.code: r.status.value for r in report.results}
    assert statuses["LD301"] == "pass" and statuses["LD303"] == "pass", statuses
    numerics = report.summary["numerics"]
    assert 15_000 < numerics["fp32_peak"] < 65_504
    assert numerics["fp16_headroom"] < 4
    (ld302,) = [f for f in report.findings if f.code == "LD302"]
    assert ld302.severity.value == "warning"
    assert f"{numerics['fp16_headroom']:.1f}x" in ld302.message
    assert "bf16 ✓" in numerics["verdict"] and "fp16 ! (" in numerics["verdict"]
    assert report.exit_code == 0


@pytest.mark.gpu
def test_the_numerics_checks_run_on_cuda_on_smollm2(smollm2_dir):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from loradoctor import engine, registry
    from loradoctor.context import ModelContext

    ctx = ModelContext(smollm2_dir, apply_spec=MINIMIND, apply_kwargs={"rank": 8, "alpha": 16},
                       dtypes=("fp32", "fp16", "bf16"), device="cuda")
    ctx.validate_inputs()
    report = engine.run("check-model", registry.select(registry.MODEL_RULES, ["LD3"]), ctx)
    statuses = {r.code: r.status.value for r in report.results}
    assert "crash" not in statuses.values() and statuses["LD300"] == "pass", report.findings
    numerics = report.summary["numerics"]
    assert all(numerics["dtypes"][d]["status"] == "ok" for d in ("fp32", "fp16", "bf16"))
    assert 15_000 < numerics["fp32_peak"] < 65_504
