"""Static mode: check-model on a model built on the meta device (`model/static.py`).

A model directory that holds only `config.json` (as a model too large for the machine is
checked) is built from its config with no storage; the user's apply code runs on it and the
rules that need no weight values run. Most tests use a small Qwen3 config written in tmp_path;
one uses Qwen3-8B's real shape, where the MiniMind closure bug must be an LD201 error and every
fix clean. `--static` forces the mode on a model with weights (the tiny Qwen3 fixture).
"""

from __future__ import annotations

import json
import os

import pytest

import loradoctor
from loradoctor import registry
from loradoctor.model import placement

from ..conftest import FIXTURES, PIPELINES
from ..helpers import check_model, found

MINIMIND = PIPELINES / "minimind_lora.py"
LORA = FIXTURES / "lora"
FIXES = ("apply_lora_factory", "apply_lora_wrapper", "apply_lora_partial",
         "apply_lora_default_args")
QWEN3_8B = dict(hidden_size=4096, num_hidden_layers=36, num_attention_heads=32,
                num_key_value_heads=8, intermediate_size=12288, vocab_size=151936, head_dim=128)
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=96, vocab_size=1000, head_dim=16)


def config_only(path, **shape):
    """A Qwen3 model directory that holds only its config.json."""
    path.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
              "max_position_embeddings": 4096, "torch_dtype": "bfloat16",
              "tie_word_embeddings": False, **shape}
    (path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return path


@pytest.fixture
def small_dir(tmp_path):
    return config_only(tmp_path / "small", **SMALL)


def statuses(data):
    return {c["code"]: c["status"] for c in data["checks"]}


def run(cli, model_dir, spec=None, *extra, select="LD"):
    # MiniMind's apply functions get the arguments its training script passes; the fixtures
    # under fixtures/lora keep their own defaults (LD405's bad one is rank 16, alpha 8).
    args = ("--apply-arg", "rank=8", "--apply-arg", "alpha=16") \
        if str(spec).startswith(str(MINIMIND)) else ()
    return check_model(cli, model_dir, spec, *args, *extra, select=select)


# --- the done-when: a config-only Qwen3-8B ---------------------------------------------------


def test_the_closure_bug_on_a_config_only_qwen3_8b_is_an_ld201_error_found_statically(
        cli, tmp_path):
    model_dir = config_only(tmp_path / "qwen3-8b", **QWEN3_8B)
    code, data = run(cli, model_dir, f"{MINIMIND}:apply_lora")
    assert code == 1
    first = found(data, "LD201", "error")[0]
    assert first["location"] == "model.layers.0.self_attn.q_proj"
    assert first["message"].startswith("model.layers.0.self_attn.q_proj runs the forward of "
                                       "model.layers.35.mlp.down_proj")
    assert "closure holds original_forward = model.layers.35.mlp.down_proj.forward" \
        in first["message"]
    assert "static mode" in first["message"]
    # 251 of the 252 patched layers hold the last one; the layer count is Qwen3-8B's.
    assert data["summary"]["adapters"] == 252
    assert data["summary"]["static_mode"]["reason"].endswith("holds no weight files (only its "
                                                             "config)")
    check = next(c for c in data["checks"] if c["code"] == "LD201")
    assert check["status"] == "fail"
    # Every rule that needs values is listed as skipped, with the reason.
    assert statuses(data)["LD401"] == statuses(data)["LD501"] == statuses(data)["LD301"] == "skip"
    # 8.2 billion parameters counted on the meta device; the adapters are MiniMind's r=8 pairs.
    total = data["summary"]["trainable_parameters"] / data["summary"]["trainable_percent"] * 100
    assert 8.1e9 < total < 8.3e9


@pytest.mark.parametrize("fix", FIXES)
def test_each_fix_of_the_closure_bug_is_clean_statically(cli, small_dir, fix):
    code, data = run(cli, small_dir, f"{MINIMIND}:{fix}")
    assert code == 0, data["findings"]
    assert not data["findings"]
    st = statuses(data)
    assert all(st[c] == "pass" for c in ("LD201", "LD202", "LD203", "LD204", "LD210", "LD405"))


def test_a_fix_is_clean_on_the_qwen3_8b_shape_too(cli, tmp_path):
    model_dir = config_only(tmp_path / "qwen3-8b", **QWEN3_8B)
    code, data = run(cli, model_dir, f"{MINIMIND}:apply_lora_factory", select="LD2")
    assert code == 0 and not data["findings"]


# --- every rule that needs no values runs ----------------------------------------------------


@pytest.mark.parametrize("spec, code, severity", [
    ("ld201.py:bad", "LD201", "error"),
    ("ld201.py:bad_equal_shapes", "LD201", "error"),
    ("ld202.py:bad", "LD202", "error"),
    ("ld203.py:bad", "LD203", "error"),
    ("ld203.py:bad_wrapped_twice", "LD203", "error"),
    ("ld204.py:bad", "LD204", "error"),
    ("ld204.py:bad_not_added", "LD204", "error"),
    ("ld205.py:bad_typo", "LD205", "error"),
    ("ld210.py:bad", "LD210", "warning"),
    ("ld210.py:bad_unfrozen", "LD210", "warning"),
    ("ld405.py:bad", "LD405", "error"),
])
def test_a_bad_fixture_is_flagged_statically(cli, small_dir, spec, code, severity,
                                             restore_linear_forward):
    _, data = run(cli, small_dir, f"{LORA}/{spec}", select=code)
    assert found(data, code, severity), data["findings"]


@pytest.mark.parametrize("spec, code", [
    ("ld201.py:good", "LD201"), ("ld202.py:good", "LD202"), ("ld203.py:good", "LD203"),
    ("ld204.py:good", "LD204"), ("ld205.py:good", "LD205"), ("ld210.py:good", "LD210"),
    ("ld405.py:good", "LD405"),
])
def test_a_good_fixture_is_clean_statically(cli, small_dir, spec, code):
    _, data = run(cli, small_dir, f"{LORA}/{spec}", select=code)
    assert not found(data, code), data["findings"]


def test_an_adapter_never_wired_in_is_named_from_the_code(cli, small_dir):
    _, data = run(cli, small_dir, f"{LORA}/ld204.py:bad", select="LD204")
    first = found(data, "LD204", "error")[0]
    assert "is attached but its forward is not patched (read from the code: static mode)" \
        in first["message"]


def test_peft_runs_on_the_meta_model_and_its_target_names_are_checked(cli, small_dir):
    code, data = check_model(cli, small_dir, None, "--peft",
                             "r=8,lora_alpha=16,target_modules=q_proj,v_prj", select="LD2,LD405")
    assert code == 1
    (typo,) = found(data, "LD205", "error")
    assert "'v_prj'" in typo["message"]
    assert statuses(data)["LD201"] == "pass"
    assert data["summary"]["adapters"] == 2  # q_proj in each of the 2 layers
    assert data["summary"]["lora_scalings"] == [2.0]


def test_adapters_created_on_the_cpu_next_to_a_meta_base_need_no_values_either(cli, small_dir):
    # lora_common's LoRA(...) is never moved to the weight's device: real CPU tensors.
    code, data = run(cli, small_dir, f"{LORA}/ld201.py:bad")
    assert code == 1 and found(data, "LD201", "error")
    assert not [c for c in data["checks"] if c["status"] == "crash"]


# --- forcing it, and where it comes from -----------------------------------------------------


@pytest.mark.slow  # over a second, measured in the day-to-day lane
def test_static_forces_the_mode_on_a_model_with_weights(cli, tiny_qwen3_dir):
    code, data = run(cli, tiny_qwen3_dir, f"{MINIMIND}:apply_lora", "--static")
    assert code == 1 and found(data, "LD201", "error")
    assert data["summary"]["static_mode"]["reason"] == "--static"
    assert statuses(data)["LD401"] == "skip"
    normal_code, normal = run(cli, tiny_qwen3_dir, f"{MINIMIND}:apply_lora", select="LD201")
    assert {f["location"] for f in found(normal, "LD201")} == \
        {f["location"] for f in found(data, "LD201")}


def test_the_api_takes_static_and_leaves_a_live_model_as_found(tiny_qwen3_dir):
    from loradoctor.inputs.pretrained import load_model
    from loradoctor.inputs.specs import load_spec

    model = load_model(tiny_qwen3_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = loradoctor.check(model=model, apply=load_spec(f"{MINIMIND}:apply_lora"),
                              apply_args={"rank": 8, "alpha": 16}, static=True,
                              select="LD2,LD4")
    assert {f.code for f in report.findings if f.severity.value == "error"} == {"LD201"}
    assert report.summary["static_mode"]["reason"] == "--static"
    after = model.state_dict()
    assert all(before[k].equal(after[k]) for k in before)
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_the_skipped_rules_say_why(cli, small_dir):
    _, data = run(cli, small_dir, f"{MINIMIND}:apply_lora_factory", "-v")
    skipped = [c for c in data["checks"] if c["status"] == "skip"]
    assert {c["code"] for c in skipped} >= {"LD401", "LD402", "LD403", "LD404", "LD406",
                                            "LD501", "LD502"}
    assert not {c["code"] for c in skipped} & set(registry.static_codes()) - {"LD205"}


def test_the_rules_that_need_no_values_run_and_the_others_skip_saying_why():
    from types import SimpleNamespace

    from loradoctor.rules import SkipCheck
    assert registry.static_codes() == ["LD201", "LD202", "LD203", "LD204", "LD205", "LD210",
                                       "LD405"]
    ctx = SimpleNamespace(static_why="--static")
    for before, after in zip(registry.MODEL_RULES, registry.applicable(
            registry.MODEL_RULES, static=True, offload=True)):
        assert after.doc == before.doc
        if before.code in registry.static_codes():
            assert after is before
            continue
        with pytest.raises(SkipCheck, match=r"^static mode \(--static\): this rule needs "
                                            r"weight values \(a forward pass or"):
            after.check(ctx)


def test_weights_that_do_not_fit_switch_to_static_mode(tmp_path, monkeypatch):
    d = config_only(tmp_path / "big", **SMALL)
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 16 * 2**30}, "weight_map": {}}), encoding="utf-8")
    (d / "model-00001-of-00002.safetensors").write_bytes(b"")
    # 16 GB of bf16 is 32 GB in fp32, kept twice: more than this machine holds, unless it is huge.
    have = placement.available_memory()
    assert placement.fp32_bytes(d) == 32 * 2**30
    reason = placement.static_reason(d)
    if have is not None and have < 64 * 2**30:
        assert reason is not None and "32.0 GB in fp32" in reason
    assert placement.static_reason(tmp_path / "missing") is None


def test_available_memory_is_read_without_psutil():
    have = placement.available_memory()
    assert have is None or have > 0
    if os.path.exists("/proc/meminfo"):
        assert have is not None


@pytest.fixture
def restore_linear_forward():
    """The LD202 fixture patches nn.Linear itself; put it back for the rest of the session."""
    from torch import nn
    original = nn.Linear.__dict__["forward"]
    yield
    nn.Linear.forward = original
