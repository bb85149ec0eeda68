"""The Trainer callback on the textbook QLoRA recipe, for real: bitsandbytes 4-bit NF4 computing
in bf16 on CPU, `prepare_model_for_kbit_training`, PEFT LoRA r=8 on every linear layer, a
`transformers.Trainer` with `LoraDoctorCallback()`.

The gate at train start measures the model the way the Trainer then trains it, so the run
trains to the end with no finding above info: gradients reach every adapter (an eval forward
without gradients would have rewritten the 4-bit layers into bitsandbytes' CPU layout, whose
matmul has no backward, and stopped the run on a false LD404), and the merge into the 4-bit
base is reported as information with its requantization error beside the adapter's effect.
The tiny Qwen3's widths (32 and 96) are not multiples of 64: the CPU layout could not even
hold them.
"""

from __future__ import annotations

import pytest
import torch

from loradoctor.findings import Severity

from .test_trainer_callback import _args, _collator, _encode, _records

pytest.importorskip("bitsandbytes")
pytest.importorskip("trl")
pytestmark = pytest.mark.filterwarnings("ignore")


def textbook_qlora(model_dir):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.manual_seed(0)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=config,
                                                 device_map="cpu")
    model = prepare_model_for_kbit_training(model)
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))


@pytest.mark.slow  # a 4-bit base trained by a real Trainer
def test_the_textbook_qlora_trainer_trains_with_the_callback_and_no_false_stop(
        tmp_path, qwen3_tokenizer, tiny_qwen3_dir):
    from transformers import Trainer

    from loradoctor.integrations.transformers import LoraDoctorCallback
    tok = qwen3_tokenizer
    rows = [_encode(tok, r["conversations"]) for r in _records()]
    callback = LoraDoctorCallback(quiet=True)
    trainer = Trainer(model=textbook_qlora(tiny_qwen3_dir), args=_args(tmp_path, 4),
                      train_dataset=rows, data_collator=_collator(tok), processing_class=tok,
                      callbacks=[callback])
    trainer.train()
    assert trainer.state.global_step == 4
    report = callback.report
    assert [f.message for f in report.findings if f.severity is not Severity.INFO] == []
    checked = {r.code: r for r in report.results}
    assert checked["LD404"].summary.startswith("B got a gradient in 14 of 14 adapters")
    assert checked["LD101"].status.value == "pass"
    assert report.summary["quantized_base"]["kind"] == "4bit"
