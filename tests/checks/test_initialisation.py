"""LD4xx adapter initialisation and training signal through the real CLI, on a tiny Llama:
identity start, dead adapters, B not zero, gradient flow, scaling, and `--train-steps N`.
"""

from __future__ import annotations

import functools

import pytest

from ..conftest import FIXTURES
from ..helpers import check_model, found

LORA = FIXTURES / "lora"


# check(cli, model_dir, spec, *extra) -> (exit code, JSON report)
check = functools.partial(check_model, select="LD2,LD4,LD5")


def test_a_random_b_is_not_an_identity_start_and_names_the_layers(cli, tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld401.py'}:bad")
    assert code == 1
    (finding,) = found(data, "LD401", "error")
    assert finding["message"].startswith("the adapted model's logits differ from the base logits "
                                         "by up to")
    assert finding["evidence"]["max_abs_diff"] > 0.1
    assert "layers that already add something: model.layers." in finding["message"]
    assert set(finding["evidence"]["layer_deltas"]) >= {"model.layers.0.self_attn.q_proj"}
    (b_finding,) = found(data, "LD403", "error")
    assert b_finding["message"].startswith("B is not zero at init in 14 of 14 adapters")


def test_a_zero_b_start_is_an_identity(cli, tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld401.py'}:good", select="LD401,LD403")
    assert code == 0 and not data["findings"]
    assert data["summary"]["init_max_abs_logit_diff"] == 0.0


def test_a_and_b_both_zero_is_a_dead_adapter(cli, tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld402.py'}:bad")
    assert code == 1
    (finding,) = found(data, "LD402", "error")
    assert finding["message"].startswith("A and B are both zero in 14 of 14 adapters")


def test_a_zero_with_b_random_is_only_an_info(cli, tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld402.py'}:info_reversed", select="LD402,LD403")
    assert code == 0  # it trains: A gets a gradient at step one (PEFT inits embeddings so)
    assert found(data, "LD402", "info")
    (b_info,) = found(data, "LD403", "info")  # B random, but A = 0 keeps the start an identity
    assert "the start is still an identity" in b_info["message"]


def test_a_random_a_passes_ld402(cli, tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld402.py'}:good", select="LD402")
    assert code == 0 and not data["findings"]


def test_b_compensated_in_the_base_weights_is_an_info_for_ld403(cli, tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld403.py'}:good_compensated",
                       select="LD401,LD403")
    assert code == 0
    assert found(data, "LD403", "info") and not found(data, "LD401")


def test_ld403_bad_and_good(cli, tiny_llama_dir):
    assert found(check(cli, tiny_llama_dir, f"{LORA / 'ld403.py'}:bad", select="LD403")[1],
                 "LD403", "error")
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld403.py'}:good", select="LD403")
    assert code == 0 and not data["findings"]


@pytest.mark.parametrize("fn, fragment", [
    ("bad", "have factors with requires_grad=False"),
    ("bad_detached", "no gradient reaches 14 of 14 adapters"),
    ("bad_checkpointing", "no gradient reaches 14 of 14 adapters"),
])
def test_adapters_outside_the_graph_get_no_gradient(cli, tiny_llama_dir, fn, fragment):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld404.py'}:{fn}", select="LD404")
    assert code == 1
    assert fragment in found(data, "LD404", "error")[0]["message"]


@pytest.mark.parametrize("fn", ["good", "good_checkpointing"])
def test_gradient_flow_reaches_every_b_and_no_base_parameter(cli, tiny_llama_dir, fn):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld404.py'}:{fn}", select="LD404")
    assert code == 0 and not data["findings"]
    summary = data["checks"][0]["summary"]
    assert summary.startswith("B got a gradient in 14 of 14 adapters")
    assert "A gets its gradient after the first update; no base parameter got one" in summary


def test_a_frozen_a_with_a_training_b_is_a_warning_not_an_error(cli, tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld404.py'}:good_frozen_a", select="LD404")
    assert code == 0  # B still trains against a fixed A (LoRA-FA): weaker, not wasted
    (finding,) = found(data, "LD404")
    assert finding["severity"] == "warning"
    assert finding["message"].startswith("A has requires_grad=False in 14 of 14 adapters")
    assert "only B learns" in finding["message"]


def test_an_unfrozen_base_gets_gradient_counted_and_left_to_ld210(cli, tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld210.py'}:bad_unfrozen", select="LD404")
    assert code == 0 and not found(data, "LD404")  # one cause, one finding: LD210's
    assert data["checks"][0]["summary"].endswith(
        "21 base tensors got one (the base is not frozen: LD210)")


def test_an_integer_division_scaling_of_zero_is_an_error(cli, tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld405.py'}:bad", select="LD405,LD204")
    assert code == 1
    (finding,) = found(data, "LD405", "error")
    assert finding["message"].startswith("the scaling is 0 in 14 of 14 adapters")
    assert not found(data, "LD204")  # not "never called": the scaling is the cause


def test_a_scaling_applied_twice_and_a_huge_scaling_are_warned(cli, tiny_llama_dir):
    _, data = check(cli, tiny_llama_dir, f"{LORA / 'ld405.py'}:bad_twice", select="LD405")
    (finding,) = found(data, "LD405", "warning")
    assert "declares scaling 2 (scaling) but its forward applies 4 (2.00x)" in finding["message"]
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld405.py'}:bad_huge", select="LD405")
    assert code == 0
    assert "the scaling alpha / r is 128" in found(data, "LD405", "warning")[0]["message"]


def test_the_usual_scaling_passes_ld405(cli, tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld405.py'}:good", select="LD405")
    assert code == 0 and not data["findings"]
    assert data["checks"][0]["summary"] == "scaling 2 with r 8 across 14 adapters"


def test_train_steps_show_a_frozen_adapter_does_not_train(cli, tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld406.py'}:bad", "--train-steps", "3",
                       select="LD406")
    assert code == 1
    messages = [f["message"] for f in found(data, "LD406", "error")]
    assert any(m.startswith("the loss does not move") for m in messages)
    assert any(m.startswith("14 of 14 adapters did not change in 3 AdamW steps") for m in messages)


def test_train_steps_show_the_loss_falling_and_every_adapter_changing(cli, tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld406.py'}:good", "--train-steps", "3",
                       select="LD406")
    assert code == 0 and not data["findings"]
    losses = data["summary"]["train_losses"]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert data["checks"][0]["summary"].endswith("14 of 14 adapters changed; base unchanged")


def test_train_steps_on_the_closure_bug_report_the_crash_as_aliasing(cli, tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld201.py'}:bad", "--train-steps", "2",
                       select="LD406")
    assert code == 1
    (finding,) = found(data, "LD406")
    assert finding["message"].startswith("training crashed at step 0: RuntimeError")
    assert "closure aliasing, see LD201" in finding["message"]


def test_without_train_steps_the_training_rule_skips(cli, tiny_llama_dir):
    code, data = check(cli, tiny_llama_dir, f"{LORA / 'ld406.py'}:good", select="LD406")
    assert code == 0 and data["checks"][0]["status"] == "skip"
