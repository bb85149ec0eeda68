"""`loradoctor.gate` leaves everything it is given exactly as it found it.

A training script calls the gate on its own live objects and then trains them, so nothing may
change: the model's parameters, buffers, `.grad` (set before the call), `requires_grad` flags
and train mode; the global RNG states (torch, Python's `random`, NumPy); the dataset instance's
items; the tokenizer's settings (padding side, backend truncation, pad token), also when the
user's dataset class, constructed by loradoctor, changes them in its constructor. The gate
runs with `train_steps=2` and `dtypes=("fp32", "bf16")` so the checks that perturb factors,
run backward passes, train and cast all run.

The models are the tiny seeded Llama (a 512-token vocabulary keeps the fp32 and bf16 passes
cheap; the Qwen3 tokenizer's ids past it are left out of the probe batch): once wrapped by
PEFT, once adapted by hand with MiniMind-style code, and once as a QLoRA model (loaded in
4-bit by bitsandbytes, prepared for k-bit training, then PEFT), whose every quantized layer
(codes, scales, quant state, flags) must come back bit for bit.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import loradoctor
from loradoctor.inputs.specs import load_spec
from loradoctor.model.quantized_state import differences, fingerprint
from loradoctor.model.safety import changes, snapshot

from ..conftest import DATA, FIXTURES, PIPELINES

PERSONA = DATA / "persona.jsonl"
PERTURBING = ("LD401", "LD404", "LD406", "LD300")  # perturbed forward, backward, train, casts


@pytest.fixture(scope="module")
def tokenizer(qwen3_tokenizer_dir):
    """This module's own tokenizer: the tests set its padding side, truncation and pad token."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(qwen3_tokenizer_dir)


def set_up_tokenizer(tok) -> None:
    """Settings a script may have made: none of them the defaults loradoctor would pick."""
    tok.padding_side = "left"
    tok.truncation_side = "left"
    tok.pad_token = "<|endoftext|>"
    tok.backend_tokenizer.enable_truncation(max_length=48)


def tokenizer_state(tok) -> dict:
    backend = tok.backend_tokenizer
    return {"padding_side": tok.padding_side, "truncation_side": tok.truncation_side,
            "pad_token": tok.pad_token, "eos_token": tok.eos_token, "bos_token": tok.bos_token,
            "special": list(tok.all_special_tokens), "size": len(tok),
            "model_max_length": tok.model_max_length, "chat_template": tok.chat_template,
            "truncation": backend.truncation, "padding": backend.padding}


def rng_states() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state().clone(), "python": random.getstate(),
            "numpy": (np_state[0], np_state[1].copy(), *np_state[2:]),
            "cuda": [s.clone() for s in torch.cuda.get_rng_state_all()]
            if torch.cuda.is_available() and torch.cuda.is_initialized() else []}


def assert_same_rng(before: dict, after: dict) -> None:
    assert torch.equal(before["torch"], after["torch"]), "torch RNG state changed"
    assert before["python"] == after["python"], "Python random state changed"
    b, a = before["numpy"], after["numpy"]
    assert b[0] == a[0] and np.array_equal(b[1], a[1]) and b[2:] == a[2:], "NumPy state changed"
    assert len(before["cuda"]) == len(after["cuda"])
    assert all(torch.equal(x, y) for x, y in zip(before["cuda"], after["cuda"]))


def buffers(model) -> dict:
    """Every buffer, persistent or not (rotary `inv_freq` is not in the state_dict)."""
    return {n: b.detach().clone() for n, b in model.named_buffers()}


def items(dataset) -> list:
    return [tuple(t.clone() for t in dataset[i]) for i in range(len(dataset))]


def peft_model(model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16,
                                            lora_dropout=0.1, target_modules="all-linear"))
    model.base_model.model.lm_head.weight.requires_grad_(True)  # the script trains the head
    return model


def hand_adapted_model(model_dir):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    load_spec(f"{FIXTURES / 'lora' / 'ld201.py'}:good")(model, rank=4, alpha=8)
    return model


def qlora_model(model_dir):
    """The QLoRA recipe on the tiny Llama: intermediate 160, a width bitsandbytes' CPU layout
    cannot hold, so an eval forward without gradients would crash halfway through a layer."""
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from loradoctor.inputs.pretrained import load_model
    base = prepare_model_for_kbit_training(load_model(model_dir, "fp32", "cpu", "4bit"))
    return get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16,
                                           target_modules="all-linear"))


def run_gate(**kwargs):
    """The gate's Report, whether it returns it or raises with it."""
    try:
        return loradoctor.gate(quiet=True, **kwargs)
    except loradoctor.UnhealthyPipeline as exc:
        return exc.report


@pytest.mark.parametrize("build", [peft_model, hand_adapted_model, qlora_model],
                         ids=["peft", "by-hand", "qlora"])
def test_the_gate_leaves_model_rng_dataset_and_tokenizer_as_found(tiny_llama_dir, tokenizer,
                                                                  build):
    model = build(tiny_llama_dir)
    model.train()
    torch.manual_seed(0)
    for p in model.parameters():  # a half-done step: grads already accumulated
        if p.requires_grad:
            p.grad = torch.randn_like(p)
    frozen = next(p for p in model.parameters() if not p.requires_grad)
    frozen.grad = torch.ones_like(frozen)  # a stale grad on a frozen parameter stays too
    dataset = load_spec(f"{PIPELINES / 'minimind_dataset.py'}:LoRADatasetFixed")(
        tokenizer, str(PERSONA))
    items_before = items(dataset)  # each item tokenizes: taken before the tokenizer is set up
    attributes_before = dict(vars(dataset))
    set_up_tokenizer(tokenizer)
    torch.manual_seed(1234)
    random.seed(5)
    np.random.seed(7)

    tok_before, rng_before = tokenizer_state(tokenizer), rng_states()
    model_before, buffers_before = snapshot(model), buffers(model)
    quantized_before = fingerprint(model)
    report = run_gate(model=model, tokenizer=tokenizer, dataset=dataset, train_steps=2,
                      dtypes=("fp32", "bf16"))

    assert_same_rng(rng_before, rng_states())  # first: the checks below draw no numbers
    assert tokenizer_state(tokenizer) == tok_before
    assert changes(model, model_before) == []
    assert differences(quantized_before, fingerprint(model)) == []
    after = buffers(model)
    assert after.keys() == buffers_before.keys()
    assert all(torch.equal(after[n], b) for n, b in buffers_before.items())
    assert vars(dataset) == attributes_before
    assert all(all(torch.equal(x, y) for x, y in zip(a, b))
               for a, b in zip(items(dataset), items_before))
    # The checks that perturb, train and cast really ran, and none crashed.
    status = {r.code: r.status.value for r in report.results}
    assert all(status[code] in ("pass", "warn", "fail") for code in PERTURBING), status
    assert "crash" not in status.values()
    # The tokenizer's truncation (48) did not cut the truth the labels are judged against.
    assert not [f for f in report.findings if f.code.startswith("LD1")], report.findings


def test_a_dataset_class_that_sets_up_the_tokenizer_has_its_changes_undone(tokenizer):
    """PaddedChatDataset sets padding_side = "right" and pad_token = eos_token on the
    tokenizer it is given, and pads through it: the caller's settings come back."""
    set_up_tokenizer(tokenizer)
    before = tokenizer_state(tokenizer)
    random.seed(5)
    rng_before = rng_states()
    report = run_gate(tokenizer=tokenizer, data=PERSONA,
                      dataset=load_spec(f"{PIPELINES / 'padding_dataset.py'}:PaddedChatDataset"))
    assert tokenizer_state(tokenizer) == before
    assert_same_rng(rng_before, rng_states())
    # Its labels are right (padding masked by position though pad == <|im_end|>), and the
    # padding its calls left on the shared backend did not pad the template's truth.
    assert report.ok and report.findings == []


def test_the_tokenizer_is_put_back_when_the_pipeline_is_unhealthy(tokenizer):
    set_up_tokenizer(tokenizer)
    before = tokenizer_state(tokenizer)
    with pytest.raises(loradoctor.UnhealthyPipeline):
        loradoctor.gate(tokenizer=tokenizer, data=PERSONA, quiet=True,
                        dataset=load_spec(f"{PIPELINES / 'padding_dataset.py'}:"
                                          f"PaddedChatDatasetEndMasked"))
    assert tokenizer_state(tokenizer) == before
