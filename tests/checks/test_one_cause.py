"""One cause, one finding: a base left trainable is reported once, by LD210, and what follows
from it points there; `--freeze-base` checks the pipeline as a training script that freezes
the base after the apply function trains it.

The pipeline is MiniMind's LoRA module as it stands (fixtures/pipelines/minimind_fp16_save.py:
square layers adapted, the base left trainable, adapters saved as fp16) on the tiny Qwen3 with
the real 151,936-token vocabulary, where fp16 without loss scaling zeroes almost every
gradient value of the tied embedding (a softmax over 151,936 tokens spreads 1/512 of a
gradient thin) while the adapters keep all of theirs. Everything runs through the real CLI.
"""

from __future__ import annotations

import functools

import pytest

from ..conftest import PIPELINES
from ..helpers import check_model, found

SPEC = f"{PIPELINES / 'minimind_fp16_save.py'}:apply_lora"
ARGS = ("--dtypes", "fp32,fp16", "--train-steps", "1")

check = functools.partial(check_model, select="LD2,LD3,LD4,LD5")


@pytest.fixture(scope="module")
def unfrozen(tiny_qwen3_dir):
    from loradoctor.cli import main
    return _run(main, tiny_qwen3_dir)


@pytest.fixture(scope="module")
def frozen(tiny_qwen3_dir):
    from loradoctor.cli import main
    return _run(main, tiny_qwen3_dir, "--freeze-base")


def _run(main, model_dir, *extra):
    """check-model --json in-process, once per module (a module-scoped `cli`)."""
    import contextlib
    import io
    import json
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["check-model", "--model", str(model_dir), "--apply", SPEC, *ARGS, *extra,
                     "--json"])
    data = json.loads(out.getvalue())
    assert not [c for c in data["checks"] if c["status"] == "crash"], data["findings"]
    return code, data


def _summaries(data):
    return {c["code"]: c["summary"] for c in data["checks"]}


@pytest.mark.slow  # the module's `unfrozen` run: a whole model trainable
def test_a_base_left_trainable_is_one_warning_and_nothing_else_warns(unfrozen):
    code, data = unfrozen
    assert code == 0
    warnings = [f for f in data["findings"] if f["severity"] in ("warning", "error")]
    assert [f["code"] for f in warnings] == ["LD210"]
    (cause,) = warnings
    assert "the base is not frozen, so 100.00% of the model trains" in cause["message"]
    assert "A training script may still freeze it after the apply function" in cause["message"]
    assert "--freeze-base" in cause["message"]
    said = [f for f in data["findings"] if "the base is not frozen" in f["message"]
            and f["code"] != "LD210" and "(LD210)" not in f["message"]]
    assert not said, "the cause is said once, by LD210; the rest point to it"


@pytest.mark.slow  # the module's `unfrozen` run: a whole model trainable
def test_what_follows_from_the_trainable_base_points_to_ld210(unfrozen):
    _, data = unfrozen
    summaries = _summaries(data)
    assert not found(data, "LD404") and not found(data, "LD406")
    assert "24 base tensors got one (the base is not frozen: LD210)" in summaries["LD404"]
    assert "base tensors changed (the base is not frozen: LD210)" in summaries["LD406"]
    (lost,) = found(data, "LD304")
    assert lost["severity"] == "info"
    assert "gradient values of base parameters" in lost["message"]
    assert "they get gradients only because the base is not frozen (LD210)" in lost["message"]
    assert "the adapters keep 100% of their" in lost["message"]
    sides = lost["evidence"]["by_side"]
    # fp16 may zero a stray adapter value or two (thread order changes the last bits); what
    # matters is that the adapters stay under LD304's 1% while the base loses most of its own.
    assert sides["adapters"]["lost_fraction"] < 0.01 and sides["base"]["lost_fraction"] > 0.9
    assert sides["base"]["lost"] <= sides["base"]["nonzero"]


@pytest.mark.slow  # the module's `frozen` run
def test_freeze_base_checks_the_pipeline_as_the_training_script_trains_it(frozen):
    code, data = frozen
    assert code == 0
    assert not [f for f in data["findings"] if f["severity"] in ("warning", "error")]
    summaries = _summaries(data)
    assert "2,048 of 4,880,224 parameters trainable (0.04%)" in summaries["LD210"]
    assert "--freeze-base froze 4,878,176 base parameters in 24 tensors" in summaries["LD210"]
    assert "no base parameter got one" in summaries["LD404"]
    assert summaries["LD406"].endswith("base unchanged")
    assert not found(data, "LD304")
    assert data["summary"]["freeze_base"] == {"tensors": 24, "parameters": 4878176}


def test_freeze_base_leaves_a_live_adapted_model_as_it_found_it(tiny_llama_dir):
    """The gate promises a live model back exactly as found: the flags it froze come back."""
    import importlib.util

    import loradoctor
    from loradoctor.inputs.pretrained import load_model
    from loradoctor.model.safety import changes, snapshot

    spec = importlib.util.spec_from_file_location("minimind_fp16_save",
                                                  PIPELINES / "minimind_fp16_save.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = load_model(tiny_llama_dir, "fp32", "cpu")
    module.apply_lora(model, rank=8)  # adapted by the user's code, base still trainable
    before = snapshot(model)
    report = loradoctor.check(model=model, freeze_base=True, select=["LD210", "LD404"],
                              device="cpu")
    assert report.summary["freeze_base"]["tensors"] == 21
    assert not [f for f in report.findings if f.code == "LD210"]
    assert changes(model, before) == []
    assert all(p.requires_grad for p in model.parameters())


def test_the_cli_in_process_agrees_with_the_fixture_run(cli, tiny_llama_dir):
    """--freeze-base through the shared helper on the small Llama: the coverage rule passes."""
    code, data = check(cli, tiny_llama_dir, SPEC, "--freeze-base", select="LD210")
    assert code == 0 and not found(data, "LD210")
    assert "--freeze-base froze 160,064 base parameters in 21 tensors" in \
        _summaries(data)["LD210"]
