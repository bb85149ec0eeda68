"""LD5xx adapter persistence through the real CLI: the safetensors round trip into a fresh
copy rebuilt by the user's own code, the user's own save/load pair, unsafe `torch.load`, and
merge equivalence.
"""

from __future__ import annotations

import functools

from ..conftest import FIXTURES, PIPELINES
from ..helpers import check_model, found

LORA = FIXTURES / "lora"
MINIMIND = PIPELINES / "minimind_lora.py"
MINIMIND_FP16 = PIPELINES / "minimind_fp16_save.py"


# check(cli, model_dir, spec, *extra) -> (exit code, JSON report)
check = functools.partial(check_model, select="LD5")


def test_adapters_outside_the_state_dict_fail_the_round_trip(cli, tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld501.py'}:bad")
    assert code == 1
    messages = [f["message"] for f in found(data, "LD501", "error")]
    assert messages[0].startswith("14 of 14 adapters are not in the model's state_dict")
    assert any(m.startswith("the fresh copy with the saved adapters loaded gives logits")
               for m in messages)


def test_registered_adapters_survive_the_round_trip_and_the_users_own_save_load(cli,
                                                                                tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld501.py'}:good")
    assert code == 0 and not data["findings"]
    summary = {c["code"]: c["summary"] for c in data["checks"]}["LD501"]
    assert summary.startswith("28 adapter tensors saved as safetensors; fresh copy restores "
                              "14 of 14 adapters, logits max |diff| 0")
    assert "save_lora/load_lora max |diff| 0" in summary


def test_a_save_filter_that_loses_the_adapters_is_an_error_and_weights_only_false_warned(
        cli, tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld501_user_save.py'}:bad")
    assert code == 1  # the model itself round-trips; the user's save_lora is what loses it
    (lossy,) = found(data, "LD501", "error")
    assert "save_lora/load_lora" in lossy["message"]
    assert "restores 0 of 14 adapters" in lossy["message"]
    (unsafe,) = found(data, "LD501", "warning")
    assert unsafe["location"].endswith("ld501_user_save.py:38")
    assert "and weights_only=False" in unsafe["message"]


def test_torch_load_without_weights_only_is_only_info_on_a_torch_that_defaults_to_safe(
        cli, tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{MINIMIND}:apply_lora_factory")
    assert code == 0 and not found(data, "LD501", "warning")
    (note,) = found(data, "LD501", "info")
    assert "without weights_only: safe on torch" in note["message"]
    assert "default since torch 2.6" in note["message"]
    assert note["evidence"]["weights_only_default"] is True


def test_torch_load_without_weights_only_is_warned_on_a_torch_older_than_2_6(
        cli, tiny_llama_dir, monkeypatch):
    from loradoctor.model import torch_load
    monkeypatch.setattr(torch_load, "torch_version", lambda: "2.5.1")
    assert not torch_load.weights_only_by_default()
    code, data = check(cli, tiny_llama_dir, f"{MINIMIND}:apply_lora_factory")
    (unsafe,) = found(data, "LD501", "warning")
    assert "without weights_only=True on torch 2.5.1" in unsafe["message"]
    assert not found(data, "LD501", "info")


def test_a_save_pair_that_rounds_b_and_drops_a_still_loses_every_adapter(cli, tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld501_half_lost.py'}:bad")
    assert code == 1
    (lossy,) = found(data, "LD501", "error")
    assert "restores 0 of 14 adapters" in lossy["message"]
    assert not [f for f in data["findings"] if "rounded" in f["message"]]


def test_a_save_pair_that_stores_fp16_restores_every_adapter_rounded_and_is_only_info(
        cli, tiny_llama_dir):
    """MiniMind's save_lora stores each adapter tensor with .half(): nothing is lost."""
    code, data = check(cli, tiny_llama_dir, f"{MINIMIND_FP16}:apply_lora")
    assert code == 0
    assert not found(data, "LD501", "error") and not found(data, "LD501", "warning")
    rounded = next(f for f in found(data, "LD501", "info") if "rounded" in f["message"])
    assert rounded["message"].startswith("your save_lora/load_lora restores all 8 adapters into "
                                         "a fresh copy, with 8 of them rounded: it stores their "
                                         "tensors as fp16")
    ev = rounded["evidence"]
    assert ev["not_restored"] == [] and len(ev["rounded"]) == 8 and ev["rounded_as"] == "fp16"
    assert 0 < ev["diff"] and 0 < ev["max_rel_error"] < 2.0 ** -10  # fp16 rounding, no more
    summary = {c["code"]: c["summary"] for c in data["checks"]}["LD501"]
    assert "fresh copy restores 8 of 8 adapters" in summary and "(rounded fp16)" in summary


def test_peft_adapters_round_trip_and_merge(cli, tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, None, "--peft",
                       "r=4,lora_alpha=8,target_modules=q_proj,v_proj")
    assert code == 0 and not data["findings"]


def test_a_bias_in_a_breaks_merge_equivalence_and_names_the_layer(cli, tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld502.py'}:bad")
    assert code == 1
    (finding,) = found(data, "LD502", "error")
    assert finding["message"].startswith("merging W + scaling * B @ A (declared scaling) into the "
                                         "base weights gives logits up to")
    assert "a bias in A or B" in finding["message"]
    assert finding["location"] == "model.layers.0.self_attn.q_proj"
    assert not found(data, "LD501")  # the bias is saved with the adapter: it round-trips


def test_a_scaling_applied_twice_breaks_the_merge(cli, tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld405.py'}:bad_twice", select="LD502")
    assert code == 1 and found(data, "LD502", "error")


def test_a_plain_lora_merges_exactly(cli, tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld502.py'}:good", select="LD502")
    assert code == 0 and not data["findings"]
    assert data["checks"][0]["summary"].startswith("merged W + scaling * B @ A (declared scaling) "
                                                   "matches the unmerged model")


def test_persistence_skips_when_the_adapted_model_cannot_run(cli, tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{MINIMIND}:apply_lora")
    assert {c["status"] for c in data["checks"]} == {"skip"}
    assert "see LD201/LD401" in data["checks"][0]["summary"]


def test_a_merge_into_a_4bit_base_requantizes_the_adapter_away(cli, qlora_base_dirs):
    """LD502 on a base its model code loads in 4-bit NF4: the merge into the dequantized base
    is exact; requantized, as merge_and_unload() stores it, it is information with figures."""
    code, data = check(cli, f"{LORA / 'ld502_quantized.py'}:bad", None, "--model-arg",
                       f"path={qlora_base_dirs['w64']}", "--peft",
                       "r=8,lora_alpha=16,target_modules=all-linear")
    assert code == 0
    (note,) = found(data, "LD502", "info")
    assert note["message"].startswith("merge_and_unload() on the 4-bit NF4 model requantizes "
                                      "the merged weights: the logits move by")
    assert note["evidence"]["kept"] < 0.5
    assert [f for f in data["findings"] if f["severity"] != "info"] == []
    summary = {c["code"]: c["summary"] for c in data["checks"]}["LD502"]
    assert summary.startswith("merged W + scaling * B @ A (declared scaling) into the "
                              "dequantized base matches the unmerged model")
    assert "; requantized into the 4-bit NF4 base, the logits move by" in summary
    assert data["summary"]["quantized_base"]["prepared_for_kbit_training"] is True


def _merge_diff(summary: str) -> float:
    """'... (logits max |diff| 2.4e-07 <= 1.0e-03) ...' -> 2.4e-07."""
    return float(summary.split("max |diff| ", 1)[1].split()[0])


def test_the_merge_into_a_quantized_base_is_measured_against_the_same_dequantized_weights(
        cli, qlora_base_dirs):
    """Merged and unmerged logits both come from the dequantized base: what the quantized kernel
    computes otherwise (bf16 compute in 4-bit; on a GPU, LLM.int8 quantizing the activations
    too) is no merge error. fp32 against fp32 on the same weights agree to rounding."""
    for loader in ("bad", "good"):  # 4-bit NF4 computing in bf16, 8-bit
        code, data = check(cli, f"{LORA / 'ld502_quantized.py'}:{loader}", None, "--model-arg",
                           f"path={qlora_base_dirs['w64']}", "--peft",
                           "r=8,lora_alpha=16,target_modules=all-linear")
        summary = {c["code"]: c["summary"] for c in data["checks"]}["LD502"]
        assert code == 0 and _merge_diff(summary) < 1e-4, summary


def test_a_hand_written_lora_on_a_4bit_base_is_measured_and_its_merge_skipped_with_why(
        cli, qlora_base_dirs):
    """The MiniMind-style patch (`module.forward` replaced per instance) on 4-bit layers: every
    layer adds its adapter (LD204 compares with the kernel's own forward, not the patched one);
    the adapters live inside the quantized layers, so no dequantized copy can run them, and
    LD502 says so instead of passing on a copy without adapters."""
    code, data = check(cli, f"{LORA / 'ld502_quantized.py'}:bad", f"{LORA / 'ld502.py'}:good",
                       "--model-arg", f"path={qlora_base_dirs['w64']}", select="LD2,LD4,LD5")
    statuses = {c["code"]: c["status"] for c in data["checks"]}
    summary = {c["code"]: c["summary"] for c in data["checks"]}
    assert code == 0 and not [f for f in data["findings"] if f["severity"] != "info"], \
        data["findings"]
    assert statuses["LD204"] == "pass" and statuses["LD501"] == "pass"
    assert statuses["LD502"] == "skip"
    assert summary["LD502"].startswith("14 adapters live inside the quantized layers they adapt")


def test_a_merge_into_an_8bit_base_keeps_the_adapter(cli, qlora_base_dirs):
    code, data = check(cli, f"{LORA / 'ld502_quantized.py'}:good", None, "--model-arg",
                       f"path={qlora_base_dirs['w64']}", "--peft",
                       "r=8,lora_alpha=16,target_modules=all-linear")
    assert code == 0 and not data["findings"]
    summary = {c["code"]: c["summary"] for c in data["checks"]}["LD502"]
    assert "; requantized into the 8-bit base, the logits move by" in summary
    kept = int(summary.rsplit("keeping ", 1)[1].split("%")[0])
    assert 90 <= kept <= 110
