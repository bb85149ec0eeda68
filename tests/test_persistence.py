"""LD5xx adapter persistence through the real CLI: the safetensors round trip into a fresh
copy rebuilt by the user's own code, the user's own save/load pair, unsafe `torch.load`, and
merge equivalence.
"""

from __future__ import annotations

import functools

from .conftest import FIXTURES, PIPELINES
from .helpers import check_model, found

LORA = FIXTURES / "lora"
MINIMIND = PIPELINES / "minimind_lora.py"


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


def test_a_save_filter_that_misses_the_adapters_and_pickled_loading_are_warned(cli,
                                                                               tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld501_user_save.py'}:bad")
    assert code == 0  # the model itself round-trips; the user's helpers are what loses it
    warnings = found(data, "LD501", "warning")
    unsafe = next(f for f in warnings if "weights_only" in f["message"])
    assert unsafe["location"].endswith("ld501_user_save.py:38")
    assert "and weights_only=False" in unsafe["message"]
    lossy = next(f for f in warnings if "save_lora/load_lora" in f["message"])
    assert "restores 0 of 14 adapters" in lossy["message"]


def test_the_minimind_pipeline_round_trips_and_only_its_torch_load_is_warned(cli,
                                                                             tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{MINIMIND}:apply_lora_factory")
    assert code == 0
    (unsafe,) = found(data, "LD501", "warning")
    assert "without weights_only=True" in unsafe["message"]


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
