"""A MiniMind-style training script gated by one line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ..conftest import PIPELINES, ROOT

SCRIPT = PIPELINES / "minimind_train.py"


def _run(tokenizer_dir, model_dir, dataset: str):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(SCRIPT), str(tokenizer_dir), str(model_dir),
                           dataset], capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow  # the training script in a process of its own
def test_the_gate_raises_before_the_first_step_with_the_bos_token_dataset(
        qwen3_tokenizer_dir, tiny_qwen3_dir):
    proc = _run(qwen3_tokenizer_dir, tiny_qwen3_dir, "LoRADataset")
    assert proc.returncode != 0
    assert "UnhealthyPipeline" in proc.stderr
    assert "LD101 no-supervised-tokens" in proc.stderr and "LD102" in proc.stderr
    assert "step 1" not in proc.stdout  # not one optimizer step was taken


@pytest.mark.slow  # the training script in a process of its own
def test_the_same_script_trains_with_the_fixed_dataset(qwen3_tokenizer_dir, tiny_qwen3_dir):
    proc = _run(qwen3_tokenizer_dir, tiny_qwen3_dir, "LoRADatasetFixed")
    assert proc.returncode == 0, proc.stderr[-2000:]
    losses = [float(line.split()[-1]) for line in proc.stdout.splitlines()
              if line.startswith("step ")]
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_a_live_model_whose_forward_raises_is_named_at_the_users_line(tiny_qwen3_dir):
    import torch  # noqa: F401
    from transformers import AutoModelForCausalLM

    import loradoctor
    sys.path.insert(0, str(PIPELINES))
    from minimind_lora import apply_lora_wrapper

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype="bfloat16")
    apply_lora_wrapper(model)  # fp32 adapters on a bf16 base: the forward cannot run
    with pytest.raises(loradoctor.InputError, match=r"forward raises .*minimind_lora\.py:\d+"):
        loradoctor.check(model=model, dtypes="fp32")
