"""check-adapter through the real CLI: real PEFT folders built from the tiny Qwen3 (trained a
few real AdamW steps, then saved clean or broken one documented way), files written by a
user's own save function, and the reference run.
"""

from __future__ import annotations

import functools
import json
import shutil

import pytest
import torch

from ..conftest import FIXTURES
from ..helpers import assert_clean_input_error, tree_digest

LORA = FIXTURES / "lora"


@pytest.fixture(scope="session")
def adapters(tiny_qwen3_dir):
    from loradoctor.model.adapter_specimens import specimens
    return specimens(tiny_qwen3_dir)


def _check(cli, adapter, model_dir, *extra):
    result = cli("check-adapter", adapter, "--model", model_dir, "--json", *extra)
    assert result.code in (0, 1), result.err
    data = json.loads(result.out)
    assert not [c for c in data["checks"] if c["status"] == "crash"], data["findings"]
    return result.code, data


def found(data, code, severity=None):
    return [f for f in data["findings"] if f["code"] == code
            and (severity is None or f["severity"] == severity)]


@pytest.fixture(scope="session")
def user_files(tmp_path_factory, tiny_qwen3_dir):
    """Files written by the user's own save functions after a few real training steps."""
    from loradoctor.inputs import pretrained
    from loradoctor.inputs import specs
    from loradoctor.model.adapter_specimens import train_steps
    from loradoctor.model.safety import rng_preserved

    out = tmp_path_factory.mktemp("user-adapters")
    files = {}
    for name, spec, saves in (("minimind", "ld510_user.py", ("save_lora", "save_lora_ddp")),
                              ("bias", "ld516_user.py", ("save_lora",))):
        apply = specs.load_spec(f"{LORA / spec}:apply_lora")
        with rng_preserved(0):
            model = pretrained.load_model(tiny_qwen3_dir)
            apply(model)
            train_steps(model)
        for save in saves:
            path = out / f"{name}-{save}.pth"
            apply.__globals__[save](model, str(path))
            files[f"{name}:{save}"] = path
    return files


# --- clean --------------------------------------------------------------------------------


def test_a_trained_peft_adapter_is_clean(cli, adapters, tiny_qwen3_dir):
    code, data = _check(cli, adapters["trained"], tiny_qwen3_dir)
    assert code == 0 and data["findings"] == [], data["findings"]
    assert data["command"] == "check-adapter"
    assert [c["code"] for c in data["checks"]] == [f"LD51{i}" for i in range(7)]
    summaries = {c["code"]: c["summary"] for c in data["checks"]}
    assert summaries["LD510"] == "each of 28 saved keys matches what PEFT expects on this base"
    assert summaries["LD515"].startswith("loaded by PEFT, it moves the base's logits by up to")
    assert summaries["LD515"].endswith("(14 of 14 adapters loaded)")
    assert data["summary"]["served_max_abs_logit_diff"] > 1e-3


def test_check_adapter_writes_nothing_into_the_adapter_folder(cli, adapters, tiny_qwen3_dir,
                                                             tmp_path):
    folder = tmp_path / "adapter"
    shutil.copytree(adapters["trained"], folder)
    before = tree_digest(folder)
    _check(cli, folder, tiny_qwen3_dir, "--select", "LD510")
    assert tree_digest(folder) == before


def test_a_pickled_adapter_is_read_with_weights_only_and_is_clean(cli, adapters, tiny_qwen3_dir,
                                                                  tmp_path):
    from safetensors.torch import load_file
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(adapters["trained"] / "adapter_config.json", folder)
    torch.save(load_file(str(adapters["trained"] / "adapter_model.safetensors")),
               folder / "adapter_model.bin")
    code, data = _check(cli, folder, tiny_qwen3_dir)
    assert code == 0 and data["findings"] == []


# --- LD510 adapter-keys-match-no-module ---------------------------------------------------


@pytest.mark.parametrize("name, pattern, prefix, fix", [
    ("ddp_prefix", "wrapper-prefix", "module.", "k.removeprefix('module.')"),
    ("compiled", "wrapper-prefix", "_orig_mod.", "k.removeprefix('_orig_mod.')"),
    ("inner_model", "prefix-too-few", "base_model.model.", "'base_model.model.' + k"),
])
def test_prefixed_keys_are_an_error_naming_the_pattern_and_the_fix(cli, adapters, tiny_qwen3_dir,
                                                                   name, pattern, prefix, fix):
    code, data = _check(cli, adapters[name], tiny_qwen3_dir)
    assert code == 1
    (finding,) = found(data, "LD510", "error")
    ev = finding["evidence"]
    assert (ev["pattern"], ev["prefix"], ev["keys"], ev["saved_keys"]) == (pattern, prefix, 28, 28)
    assert finding["message"].startswith("28 of 28 saved keys ")
    assert "PEFT loads 0 of 14 adapters from the file and serves the base model (logits max " \
           "|diff| 0 from the base)" in finding["message"]
    assert "'Found missing adapter keys while loading the checkpoint'" in finding["message"]
    assert ev["served_max_abs_diff"] == 0 and ev["intended_max_abs_diff"] > 1e-3
    assert fix in finding["fix"]
    (no_effect,) = found(data, "LD515", "error")
    assert "the served model is the base; its keys match nothing (LD510)" in no_effect["message"]
    assert not found(data, "LD511") and not found(data, "LD513")


@pytest.mark.slow  # over a second, measured in the day-to-day lane
def test_renamed_layers_name_the_nearest_real_key(cli, adapters, tiny_qwen3_dir, tmp_path):
    from loradoctor.model.adapter_specimens import rewrite
    folder = rewrite(adapters["trained"], tmp_path / "renamed",
                     keys=lambda k: k.replace(".self_attn.", ".attention."))
    code, data = _check(cli, folder, tiny_qwen3_dir, "--select", "LD510")
    assert code == 1
    (finding,) = found(data, "LD510")
    assert finding["evidence"]["pattern"] == "renamed"
    assert finding["message"].startswith("16 of 28 saved keys name layers the base model does "
                                         "not have")
    assert "nearest real key 'base_model.model.model.layers.0.self_attn." in finding["message"]


@pytest.mark.slow  # the users' files are trained and saved first
def test_a_users_file_saved_from_ddp_is_an_error_and_its_own_save_is_clean(cli, user_files,
                                                                          tiny_qwen3_dir):
    apply = f"{LORA / 'ld510_user.py'}:apply_lora"
    code, data = _check(cli, user_files["minimind:save_lora"], tiny_qwen3_dir, "--apply", apply)
    assert code == 0 and data["findings"] == [], data["findings"]
    code, data = _check(cli, user_files["minimind:save_lora_ddp"], tiny_qwen3_dir,
                        "--apply", apply)
    assert code == 1
    (finding,) = found(data, "LD510", "error")
    assert finding["evidence"]["prefix"] == "module."
    assert "your load_lora loads 0 of 14 adapters from the file and serves the base" in \
        finding["message"]
    assert found(data, "LD515", "error")


# --- LD511 adapter-factor-all-zero --------------------------------------------------------


def test_an_adapter_saved_before_training_is_an_error(cli, adapters, tiny_qwen3_dir):
    code, data = _check(cli, adapters["untrained"], tiny_qwen3_dir)
    assert code == 1
    (finding,) = found(data, "LD511", "error")
    assert finding["message"].startswith("lora_B is all zero in 14 of 14 adapted layers")
    assert "the file is the untrained initialisation" in finding["message"]
    (no_effect,) = found(data, "LD515", "error")
    assert "every update is zero (LD511)" in no_effect["message"]


def test_a_zero_a_in_one_layer_is_named(cli, adapters, tiny_qwen3_dir, tmp_path):
    from loradoctor.model.adapter_specimens import rewrite
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"
    folder = rewrite(adapters["trained"], tmp_path / "a-zero",
                     tensors=lambda s: {**s, key: torch.zeros_like(s[key])})
    code, data = _check(cli, folder, tiny_qwen3_dir, "--select", "LD511")
    assert code == 1
    (finding,) = found(data, "LD511")
    assert finding["message"].startswith("lora_A is all zero in 1 of 14 adapted layers "
                                         "(model.layers.1.self_attn.v_proj)")


# --- LD512 adapter-tensor-not-finite ------------------------------------------------------


def test_a_nan_in_a_saved_tensor_is_an_error(cli, adapters, tiny_qwen3_dir):
    code, data = _check(cli, adapters["nan"], tiny_qwen3_dir)
    assert code == 1
    (finding,) = found(data, "LD512", "error")
    assert finding["message"].startswith("1 of 28 tensors hold NaN or inf")
    assert "holds 1 NaN of 256 values" in finding["message"]
    assert finding["location"] == "model.layers.0.mlp.down_proj"
    assert "the logits are not finite" in found(data, "LD515")[0]["message"]


# --- LD513 adapter-disagrees-with-config --------------------------------------------------


@pytest.mark.slow  # over a second, measured in the day-to-day lane
def test_a_rank_that_disagrees_with_the_config_is_an_error(cli, adapters, tiny_qwen3_dir):
    code, data = _check(cli, adapters["rank_mismatch"], tiny_qwen3_dir)
    assert code == 1
    (finding,) = found(data, "LD513", "error")
    assert "is saved with rank 8" in finding["message"]
    assert "but adapter_config.json says r=16 (and 13 more layers alike)" in finding["message"]
    (load,) = found(data, "LD515", "error")
    assert load["message"].startswith("PEFT cannot load the adapter on this base: RuntimeError")
    assert "size mismatch" in load["message"]


def test_config_targets_the_base_lacks_and_layers_without_tensors_are_errors(
        cli, adapters, tiny_qwen3_dir, tmp_path):
    from loradoctor.model.adapter_specimens import rewrite
    folder = rewrite(adapters["trained"], tmp_path / "targets",
                     config=lambda c: {**c, "target_modules": [*c["target_modules"], "c_attn"]},
                     tensors=lambda s: {k: v for k, v in s.items() if ".layers.1.mlp." not in k})
    code, data = _check(cli, folder, tiny_qwen3_dir, "--select", "LD513")
    assert code == 1
    messages = [f["message"] for f in found(data, "LD513", "error")]
    assert any(m.startswith("adapter_config.json's target_modules entry 'c_attn' matches no "
                            "module of the base model") for m in messages)
    assert any(m.startswith("the config adapts 3 layers the file holds no tensors for "
                            "(model.layers.1.mlp.down_proj") for m in messages)


def test_mixed_factor_dtypes_are_a_warning(cli, adapters, tiny_qwen3_dir, tmp_path):
    from loradoctor.model.adapter_specimens import rewrite
    folder = rewrite(adapters["trained"], tmp_path / "dtypes", tensors=lambda s: {
        k: v.half() if ".lora_A." in k else v for k, v in s.items()})
    code, data = _check(cli, folder, tiny_qwen3_dir, "--select", "LD513")
    assert code == 0
    (finding,) = found(data, "LD513", "warning")
    assert "lora_A is float16 and lora_B float32 (and 13 more layers alike)" in finding["message"]


# --- LD514 adapter-update-outlier ---------------------------------------------------------


@pytest.mark.slow  # 1.5 to 4 s, measured in the day-to-day lane
def test_one_layer_whose_update_runs_away_is_warned_with_the_table(cli, adapters, tiny_qwen3_dir,
                                                                  tmp_path):
    from loradoctor.model.adapter_specimens import rewrite
    key = "base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight"
    folder = rewrite(adapters["trained"], tmp_path / "outlier",
                     tensors=lambda s: {**s, key: s[key] * 100})
    code, data = _check(cli, folder, tiny_qwen3_dir, "--select", "LD514")
    assert code == 0
    (finding,) = found(data, "LD514", "warning")
    assert finding["location"] == "model.layers.1.self_attn.o_proj"
    assert finding["message"].startswith("the update outweighs the pretrained weight in 1 of 14 "
                                         "layers: model.layers.1.self_attn.o_proj has")
    result = cli("check-adapter", folder, "--model", tiny_qwen3_dir, "--select", "LD514")
    assert "relative update ||scaling * B @ A|| / ||W|| per adapted layer" in result.out


def test_evenly_trained_layers_pass_ld514(cli, adapters, tiny_qwen3_dir):
    code, data = _check(cli, adapters["trained"], tiny_qwen3_dir, "--select", "LD514")
    assert code == 0 and not data["findings"]
    assert data["checks"][0]["summary"].startswith("relative update from ")


# --- LD516 merged-adapter-differs ---------------------------------------------------------


@pytest.mark.slow  # the users' files are trained and saved first
def test_a_bias_in_a_makes_the_merged_adapter_differ(cli, user_files, tiny_qwen3_dir):
    code, data = _check(cli, user_files["bias:save_lora"], tiny_qwen3_dir,
                        "--apply", f"{LORA / 'ld516_user.py'}:apply_lora")
    assert code == 1
    (finding,) = found(data, "LD516", "error")
    assert finding["message"].startswith("merged into the base weights, the adapter gives "
                                         "logits up to")
    assert not found(data, "LD515")  # served, it does change the model


# --- inputs -------------------------------------------------------------------------------


def test_unreadable_artifacts_exit_2_naming_the_file(cli, adapters, tiny_qwen3_dir, tmp_path):
    run = functools.partial(cli, "check-adapter")
    assert_clean_input_error(run(tmp_path / "missing", "--model", tiny_qwen3_dir),
                              "no such file or directory")
    assert_clean_input_error(run(tmp_path, "--model", tiny_qwen3_dir),
                              "no adapter_config.json, not a PEFT adapter folder")
    assert_clean_input_error(run(adapters["trained"] / "adapter_model.safetensors", "--model",
                                  tiny_qwen3_dir), "is checked with --apply SPEC")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(adapters["trained"] / "adapter_config.json", pickled)
    torch.save({"w": torch.zeros(2), "extra": functools.partial(print)},
               pickled / "adapter_model.bin")
    assert_clean_input_error(run(pickled, "--model", tiny_qwen3_dir),
                              "cannot be loaded with torch.load(weights_only=True)")
    assert_clean_input_error(run(adapters["trained"], "--model", tiny_qwen3_dir, "--apply",
                                  f"{LORA / 'ld210.py'}:good"), "no load function beside it")


@pytest.mark.slow  # a separate process: a torch import of its own
def test_json_output_is_one_object_through_the_real_process(cli_subprocess, adapters,
                                                            tiny_qwen3_dir):
    result = cli_subprocess("check-adapter", adapters["ddp_prefix"], "--model", tiny_qwen3_dir,
                            "--json")
    assert result.code == 1, result.err
    data = json.loads(result.out)
    assert {f["code"] for f in data["findings"]} == {"LD510", "LD515"}


# --- the reference run --------------------------------------------------------------------


@pytest.mark.slow  # a reference run
def test_the_ddp_reference_run_serves_the_base_and_check_adapter_names_it():
    from loradoctor.reference.adapter import run_ddp_adapter
    outcome = run_ddp_adapter()
    assert outcome.reproduced, outcome.verdict
    assert outcome.flagged["saved from the DDP wrapper"] == ["LD510", "LD515"]
    assert outcome.flagged["saved with model.module.save_pretrained"] == []
    assert "serves logits max |diff| 0 from the base model: the base" in outcome.verdict[1]


@pytest.mark.slow  # 1.5 to 4 s, measured in the day-to-day lane
def test_the_python_api_checks_an_adapter(adapters, tiny_qwen3_dir):
    import loradoctor
    report = loradoctor.check(adapter=adapters["ddp_prefix"], model=tiny_qwen3_dir, device="cpu",
                              select="LD510")
    assert not report.ok and [f.code for f in report.findings] == ["LD510"]
    assert loradoctor.check(adapter=adapters["trained"], model=tiny_qwen3_dir, device="cpu",
                            select="LD510").ok
