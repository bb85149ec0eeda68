"""The real artifacts, built offline: the Qwen3 tokenizer and the SmolLM2-135M model."""

from __future__ import annotations

import pytest


def test_the_real_qwen3_tokenizer_has_no_bos_token(qwen3_tokenizer):
    assert qwen3_tokenizer.bos_token is None
    assert qwen3_tokenizer.eos_token == "<|im_end|>"
    assert qwen3_tokenizer.pad_token == "<|endoftext|>"
    assert len(qwen3_tokenizer) == 151669
    # The bug this project started from, reproduced on the real tokenizer:
    assert f"{qwen3_tokenizer.bos_token}assistant\n" == "Noneassistant\n"


def test_the_real_qwen3_tokenizer_encodes_like_qwen(qwen3_tokenizer):
    assert qwen3_tokenizer("hello world", add_special_tokens=False)["input_ids"] == [14990, 1879]
    assert qwen3_tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<think>"]) == [
        151644, 151645, 151667]
    assert qwen3_tokenizer("你好", add_special_tokens=False)["input_ids"] == [108386]


def test_the_real_qwen3_template_renders_an_empty_think_block_in_the_last_turn_only(qwen3_tokenizer):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]
    text = qwen3_tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
                    "<|im_start|>user\nBye<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\n\n</think>\n\nBye!<|im_end|>\n")


def test_the_smollm2_tokenizer_uses_chatml_with_pad_equal_to_eos(smollm2_tokenizer):
    assert smollm2_tokenizer.bos_token == "<|im_start|>"
    assert smollm2_tokenizer.eos_token == "<|im_end|>"
    assert smollm2_tokenizer.pad_token == smollm2_tokenizer.eos_token


@pytest.mark.slow
def test_the_real_smollm2_model_answers_sensibly(smollm2_dir, smollm2_tokenizer):
    import torch

    from loradoctor.inputs.pretrained import load_model
    model = load_model(smollm2_dir, "fp32", "cpu")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    inputs = smollm2_tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = smollm2_tokenizer.decode(out[0, inputs["input_ids"].shape[1]:],
                                      skip_special_tokens=True)
    assert "Paris" in answer


def test_tiny_models_are_small_and_load(tiny_qwen3_dir, tiny_llama_dir):
    from loradoctor.inputs.pretrained import has_tokenizer, load_model
    for d in (tiny_qwen3_dir, tiny_llama_dir):
        size = sum(p.stat().st_size for p in d.iterdir())
        assert size < 12 * 2**20, f"{d} is {size} bytes"
        assert not has_tokenizer(d)  # the random-probe case
    qwen = load_model(tiny_qwen3_dir, "fp32", "cpu")
    assert qwen.config.vocab_size == 151669 and qwen.dtype.is_floating_point


def test_a_missing_artifact_is_rebuilt_automatically(tmp_path, monkeypatch):
    from loradoctor import assets
    monkeypatch.setenv("LORADOCTOR_CACHE", str(tmp_path))
    built = assets.tiny_llama_dir()
    assert built.is_relative_to(tmp_path) and (built / ".complete").exists()
    assert assets.tiny_llama_dir() == built  # second call reuses it
