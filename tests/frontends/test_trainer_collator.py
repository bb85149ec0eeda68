"""The labels the model really gets, through real trainers: the callback compares the trainer's
own collator with its dataset (LD118) and judges packed batches sample by sample (LD119,
LD120, the attention measured on the run's model).

Tiny Qwen3 (random weights, the real Qwen3 tokenizer), PEFT LoRA, CPU, a few steps each: a
dataset that masks the prompt, collated by `DataCollatorForLanguageModeling(mlm=False)`, is
stopped before its first step; `DataCollatorForSeq2Seq` trains; TRL's `SFTTrainer(packing=True)`
and transformers' `DataCollatorWithFlattening` train clean with their samples judged one by
one; a packed batch given an all-ones attention mask is stopped by measurement.
"""

from __future__ import annotations

import pytest
import torch

import loradoctor

from ..checks.test_collation import LD118, PERSONA, _collator, _rows
from .test_trainer_callback import _args, _peft_model, _records

pytest.importorskip("trl")
pytestmark = pytest.mark.filterwarnings("ignore")


def _masked_rows(tok):
    from loradoctor.inputs.specs import load_spec
    padded = load_spec(f"{LD118}:PaddedChats")(tok, str(PERSONA))
    return [padded[i] for i in range(len(padded))]


def _callback(**kwargs):
    from loradoctor.integrations.transformers import LoraDoctorCallback
    return LoraDoctorCallback(quiet=True, **kwargs)


def _statuses(report) -> dict[str, str]:
    return {r.code: r.status.value for r in report.results}


def test_a_collator_that_rebuilds_the_datasets_labels_is_stopped_before_its_first_step(
        tmp_path, qwen3_tokenizer, tiny_qwen3_dir):
    from transformers import DataCollatorForLanguageModeling, Trainer
    tok = qwen3_tokenizer
    model = _peft_model(tiny_qwen3_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = Trainer(model=model, args=_args(tmp_path, 4), train_dataset=_masked_rows(tok),
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
                      processing_class=tok, callbacks=[_callback(check_model=False)])
    with pytest.raises(loradoctor.UnhealthyPipeline) as raised:
        trainer.train()
    errors = raised.value.report.errors
    assert [f.code for f in errors] == ["LD118"]
    assert errors[0].evidence["collator"] == "DataCollatorForLanguageModeling"
    assert errors[0].evidence["prompt_trained"] > 0 and errors[0].location == "dataset[0]"
    assert trainer.state.global_step == 0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


def test_a_collator_that_pads_the_datasets_labels_trains(tmp_path, qwen3_tokenizer,
                                                         tiny_qwen3_dir):
    from transformers import DataCollatorForSeq2Seq, Trainer
    tok = qwen3_tokenizer
    callback = _callback(check_model=False)
    trainer = Trainer(model=_peft_model(tiny_qwen3_dir), args=_args(tmp_path, 2),
                      train_dataset=_masked_rows(tok), data_collator=DataCollatorForSeq2Seq(tok),
                      processing_class=tok, callbacks=[callback])
    trainer.train()
    assert trainer.state.global_step == 2 and callback.report.ok
    assert _statuses(callback.report)["LD118"] == "pass"


@pytest.mark.slow  # TRL's SFTTrainer with packing, a step
def test_trl_packing_is_judged_sample_by_sample_and_its_attention_measured(
        tmp_path, qwen3_tokenizer, tiny_qwen3_dir):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer
    data = Dataset.from_list([{"messages": r["conversations"]} for r in _records()])
    config = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1,
                       report_to=[], save_strategy="no", use_cpu=True, seed=0, packing=True,
                       max_length=128, assistant_only_loss=True)
    torch.manual_seed(0)
    callback = _callback(select="LD1")  # the model given (LD120 runs it), its own rules not
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir),
                         args=config, train_dataset=data, processing_class=qwen3_tokenizer,
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                task_type="CAUSAL_LM"),
                         callbacks=[callback])
    trainer.train()
    report = callback.report
    assert trainer.state.global_step == 1 and report.ok, [f.message for f in report.errors]
    statuses = _statuses(report)
    assert statuses["LD101"] == statuses["LD119"] == statuses["LD120"] == "pass"
    assert statuses["LD118"] == "pass"
    masking = report.summary["masking"]
    assert masking["samples"] > 2  # each packed sample judged alone, not 2 packed rows
    assert masking["samples_by_own_tokens"] == masking["samples"]


@pytest.mark.slow  # two real Trainers
def test_a_flattening_collator_trains_clean_and_an_all_ones_mask_is_stopped(
        tmp_path, qwen3_tokenizer, tiny_qwen3_dir):
    from transformers import Trainer
    rows = _rows(qwen3_tokenizer, 8)
    outcomes = {}
    for name in ("ld120.py:good", "ld120.py:bad"):
        callback = _callback(select="LD1", on_error="stop")
        trainer = Trainer(model=_peft_model(tiny_qwen3_dir),
                          args=_args(tmp_path / name, 2),
                          train_dataset=rows, data_collator=_collator(name),
                          processing_class=qwen3_tokenizer, callbacks=[callback])
        trainer.train()
        outcomes[name] = (_statuses(callback.report), [f.code for f in callback.report.errors],
                          trainer.state.global_step)
    good, bad = outcomes["ld120.py:good"], outcomes["ld120.py:bad"]
    assert good[0]["LD118"] == good[0]["LD119"] == good[0]["LD120"] == "pass"
    assert good[1] == [] and good[2] == 2
    assert bad[1] == ["LD120"] and bad[2] <= 1


@pytest.mark.slow  # a real Trainer
def test_collating_the_dataset_again_leaves_the_trained_batches_as_they_were(
        tmp_path, qwen3_tokenizer, tiny_qwen3_dir):
    """A shuffled run whose collator draws random numbers sees the same batches, and ends
    with the same loss, with the callback as without it."""
    from transformers import DataCollatorForSeq2Seq, Trainer
    pad = DataCollatorForSeq2Seq(qwen3_tokenizer)
    seen = []

    def noisy(features):
        batch = pad(features)
        batch["labels"][:, -1:] = -100 if torch.rand(()) < 2 else 0  # draws, changes nothing
        seen[-1].append(batch["input_ids"][:, :8].tolist())
        return batch
    losses = []
    for callbacks in ([], [_callback(check_model=False)]):
        seen.append([])
        trainer = Trainer(model=_peft_model(tiny_qwen3_dir), args=_args(tmp_path, 3),
                          train_dataset=_masked_rows(qwen3_tokenizer), data_collator=noisy,
                          processing_class=qwen3_tokenizer, callbacks=callbacks)
        trainer.train()
        losses.append([h["loss"] for h in trainer.state.log_history if "loss" in h])
    assert losses[0] == losses[1]
    assert seen[0] == seen[1][-len(seen[0]):]  # the run's own batches, after the gate's
