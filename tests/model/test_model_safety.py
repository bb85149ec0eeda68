"""check-model leaves the user's model as it found it, and its probes stay cheap.

The later gate calls the engine on a user's live model, so every check that perturbs or
trains must restore what it touched: parameter and buffer values, `.grad`, `requires_grad`,
train/eval mode and the global RNG states. These tests build a context the way the CLI does,
put the model in a state a training script could leave it in, run the full check-model rule
list (numerics included) with `--train-steps`, and compare.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from loradoctor import engine, registry
from loradoctor.context import ModelContext

from ..conftest import DATA, FIXTURES, PIPELINES

LORA = FIXTURES / "lora"
MINIMIND = PIPELINES / "minimind_lora.py"


def _state(model):
    return {
        "values": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "modes": {n: m.training for n, m in model.named_modules()},
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
    }


def _assert_same(before, after):
    assert before["values"].keys() == after["values"].keys()
    changed = [k for k, v in before["values"].items() if not torch.equal(v, after["values"][k])]
    assert not changed, f"values changed: {changed[:5]}"
    assert before["requires_grad"] == after["requires_grad"]
    assert before["modes"] == after["modes"]
    assert before["grads"].keys() == after["grads"].keys()
    for n, g in before["grads"].items():
        h = after["grads"][n]
        assert (g is None) == (h is None) and (g is None or torch.equal(g, h)), n
    assert torch.equal(before["torch_rng"], after["torch_rng"])
    assert before["python_rng"] == after["python_rng"]


@pytest.mark.parametrize("spec, peft", [
    (f"{MINIMIND}:apply_lora_default_args", None),
    (None, {"r": 8, "lora_alpha": 16, "target_modules": "all-linear", "lora_dropout": 0.1}),
    (f"{LORA / 'ld501.py'}:bad", None),         # unregistered adapters, perturbed anyway
    (f"{MINIMIND}:apply_lora", None),           # the closure bug: forwards crash midway
], ids=["minimind", "peft-dropout", "unregistered", "closure-bug"])
def test_the_full_check_model_run_leaves_the_users_model_unchanged(tiny_llama_dir, spec, peft):
    ctx = ModelContext(tiny_llama_dir, apply_spec=spec, peft_kwargs=peft, train_steps=2)
    ctx.validate_inputs()
    model = ctx.adapted
    # A state a training script could hand over: train mode, a gradient, one frozen adapter.
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    if trainable:
        trainable[0].grad = torch.full_like(trainable[0], 0.5)
        trainable[-1].requires_grad_(False)
    torch.manual_seed(1234)
    random.seed(1234)
    before = _state(model)
    report = engine.run("check-model", registry.MODEL_RULES, ctx)
    assert not [r.code for r in report.results if r.status.value == "crash"], \
        [r.traceback for r in report.results if r.traceback]
    _assert_same(before, _state(model))


def test_aliasing_and_identity_do_not_cost_a_model_forward_per_layer(tiny_llama_dir):
    from loradoctor.model.identity import adapted_forward
    from loradoctor.model.layer_probe import module_probe

    ctx = ModelContext(tiny_llama_dir, apply_spec=f"{MINIMIND}:apply_lora_default_args")
    ctx.validate_inputs()
    calls = []
    handle = ctx.adapted.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        module_probe(ctx)  # 14 layers probed, each on its own small input
        assert calls == []
        adapted_forward(ctx)  # identity: one batched forward of the whole model
        assert len(calls) == 1
    finally:
        handle.remove()


@pytest.mark.slow  # 1.5 to 4 s, measured in the day-to-day lane
def test_the_probe_batch_comes_from_the_data_through_the_tokenizer(cli, tiny_qwen3_dir,
                                                                   qwen3_tokenizer_dir):
    result = cli("check-model", "--model", tiny_qwen3_dir, "--apply",
                 f"{MINIMIND}:apply_lora_default_args", "--data", DATA / "persona.jsonl",
                 "--tokenizer", qwen3_tokenizer_dir, "--select", "LD201,LD401", "--json")
    assert result.code == 0, result.err
    assert not json.loads(result.out)["findings"]


def test_a_model_directory_without_a_tokenizer_uses_random_ids_under_a_fixed_seed(tiny_llama_dir):
    first = ModelContext(tiny_llama_dir).probe
    second = ModelContext(tiny_llama_dir).probe
    assert first["source"].startswith("random token ids (seed 0)")
    assert torch.equal(first["input_ids"], second["input_ids"])
    assert first["input_ids"].shape == (4, 128)
