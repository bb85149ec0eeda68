"""The Trainer callback and the watchdog on real `transformers.Trainer` and TRL `SFTTrainer` runs.

Tiny Qwen3 (random weights, the real Qwen3 tokenizer), PEFT LoRA, CPU, a dozen steps each:
a collator that shifts labels by hand is stopped before its first optimizer step; a stream
whose later batches supervise nothing goes NaN mid-run (the Trainer's logs hide it) and is
stopped at that step; a healthy Trainer and a healthy SFTTrainer (`assistant_only_loss` on and
off, `completion_only_loss`, `peft_config`) train to the end with no stop.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import loradoctor
from ..conftest import DATA

pytest.importorskip("trl")
pytestmark = pytest.mark.filterwarnings("ignore")


def _records():
    return [json.loads(line) for line in (DATA / "persona.jsonl").read_text().splitlines()
            if line.strip()]


def _encode(tok, messages, supervise=True):
    """Correct labels from the rendered text's offsets (the reply and its <|im_end|>)."""
    text = tok.apply_chat_template(messages, tokenize=False)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = enc["input_ids"], [-100] * len(enc["input_ids"])
    if supervise:
        header = "<|im_start|>assistant\n"
        s = text.index(header) + len(header)
        e = text.index("<|im_end|>", s) + len("<|im_end|>")
        for i, (a, b) in enumerate(enc["offset_mapping"]):
            if b > s and a < e:
                labels[i] = ids[i]
    return {"input_ids": ids, "labels": labels}


def _collator(tok, shift=False):
    def collate(features):
        n = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), n), tok.pad_token_id)
        labels = torch.full((len(features), n), -100)
        mask = torch.zeros((len(features), n), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            ids[i, :k] = torch.tensor(f["input_ids"])
            labels[i, :k] = torch.tensor(f["labels"])
            mask[i, :k] = 1
        if shift:  # the bug: labels shifted by hand, and the model shifts again
            labels = torch.cat([labels[:, 1:], torch.full((len(features), 1), -100)], dim=1)
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
    return collate


class _Stream(torch.utils.data.IterableDataset):
    """A streamed dataset (no length): the Trainer reads it in order."""

    def __init__(self, rows):
        self.rows = rows

    def __iter__(self):
        return iter(self.rows)


def _peft_model(tiny_qwen3_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))


def _args(tmp_path, steps, **extra):
    from transformers import TrainingArguments
    return TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2,
                             max_steps=steps, logging_steps=1, report_to=[],
                             save_strategy="no", learning_rate=1e-3, use_cpu=True, seed=0,
                             **extra)


def _callback(**kwargs):
    from loradoctor.integrations.transformers import LoraDoctorCallback
    # The model checks have their own tests; here the run's data and steps are what matter.
    return LoraDoctorCallback(quiet=True, check_model=False, **kwargs)


def test_it_stops_a_trainer_whose_collator_shifts_labels_before_its_first_step(
        tmp_path, qwen3_tokenizer, tiny_qwen3_dir):
    from transformers import Trainer
    tok = qwen3_tokenizer
    rows = [_encode(tok, r["conversations"]) for r in _records()]
    model = _peft_model(tiny_qwen3_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    callback = _callback(on_error="raise")
    trainer = Trainer(model=model, args=_args(tmp_path, 6), train_dataset=rows,
                      data_collator=_collator(tok, shift=True), processing_class=tok,
                      callbacks=[callback])
    with pytest.raises(loradoctor.UnhealthyPipeline) as raised:
        trainer.train()
    assert "LD106" in str(raised.value)
    assert [f.code for f in raised.value.report.errors] == ["LD106"]
    assert trainer.state.global_step == 0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


def test_stop_mode_ends_training_without_an_optimizer_update(tmp_path, qwen3_tokenizer,
                                                             tiny_qwen3_dir):
    from transformers import Trainer
    tok = qwen3_tokenizer
    rows = [_encode(tok, r["conversations"]) for r in _records()]
    model = _peft_model(tiny_qwen3_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    callback = _callback(on_error="stop")
    trainer = Trainer(model=model, args=_args(tmp_path, 6), train_dataset=rows,
                      data_collator=_collator(tok, shift=True), processing_class=tok,
                      callbacks=[callback])
    trainer.train()
    assert trainer.state.global_step <= 1
    assert [f.code for f in callback.report.errors] == ["LD106"]
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


def test_it_stops_a_run_whose_loss_goes_nan_mid_run_though_its_logs_look_normal(
        tmp_path, qwen3_tokenizer, tiny_qwen3_dir):
    from transformers import Trainer
    tok = qwen3_tokenizer
    records = _records()
    # Rows 8.. supervise nothing: their batches have a 0/0 loss from step 5 on.
    rows = [_encode(tok, r["conversations"], supervise=i < 8) for i, r in enumerate(records)]
    callback = _callback(on_error="stop")
    trainer = Trainer(model=_peft_model(tiny_qwen3_dir), args=_args(tmp_path, 10),
                      train_dataset=_Stream(rows), data_collator=_collator(tok),
                      processing_class=tok, callbacks=[callback])
    trainer.train()
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert all(math.isfinite(float(x)) for x in logged)  # the Trainer's filter hides the NaN
    errors = callback.report.errors
    assert [f.code for f in errors] == ["LD420"]
    assert errors[0].evidence["step"] == 5 and errors[0].location == "step 5"
    assert trainer.state.global_step == 5


def test_a_healthy_trainer_trains_to_the_end_with_the_callback(tmp_path, qwen3_tokenizer,
                                                               tiny_qwen3_dir):
    from transformers import Trainer
    tok = qwen3_tokenizer
    rows = [_encode(tok, r["conversations"]) for r in _records()]
    callback = _callback(on_error="raise")
    trainer = Trainer(model=_peft_model(tiny_qwen3_dir), args=_args(tmp_path, 8),
                      train_dataset=rows, data_collator=_collator(tok), processing_class=tok,
                      callbacks=[callback])
    trainer.train()
    assert trainer.state.global_step == 8
    assert callback.report.ok, [f.message for f in callback.report.errors]


@pytest.mark.slow  # TRL's SFTTrainer, six steps
@pytest.mark.parametrize("mode", ["assistant_only_loss", "completion_only_loss", "full"])
def test_a_healthy_sft_trainer_trains_with_the_callback_and_no_false_stop(
        tmp_path, qwen3_tokenizer, tiny_qwen3_dir, mode):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer
    records = _records()
    if mode == "completion_only_loss":
        data = Dataset.from_list([{"prompt": r["conversations"][:-1],
                                   "completion": r["conversations"][-1:]} for r in records])
    else:
        data = Dataset.from_list([{"messages": r["conversations"]} for r in records])
    config = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=6,
                       logging_steps=1, report_to=[], save_strategy="no", learning_rate=1e-3,
                       use_cpu=True, seed=0, assistant_only_loss=mode == "assistant_only_loss",
                       completion_only_loss=mode == "completion_only_loss" or None)
    torch.manual_seed(0)
    callback = _callback(on_error="raise")
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir),
                         args=config, train_dataset=data, processing_class=qwen3_tokenizer,
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                task_type="CAUSAL_LM"),
                         callbacks=[callback])
    trainer.train()
    assert trainer.state.global_step == 6
    assert callback.report.ok, [f.message for f in callback.report.errors]
    checked = {r.code: r for r in callback.report.results}
    assert checked["LD101"].status.value == "pass"


def test_the_gate_measures_the_dtypes_the_run_trains_in(tmp_path):
    from loradoctor.integrations.transformers import run_dtypes
    assert run_dtypes(_args(tmp_path, 1)) == ("fp32",)
    assert run_dtypes(_args(tmp_path, 1, bf16=True)) == ("fp32", "bf16")


@pytest.mark.slow  # a real Trainer, several steps
def test_an_fp32_run_is_not_measured_in_fp16_or_bf16(tmp_path, qwen3_tokenizer, tiny_qwen3_dir):
    from transformers import Trainer

    from loradoctor.integrations.transformers import LoraDoctorCallback
    tok = qwen3_tokenizer
    rows = [_encode(tok, r["conversations"]) for r in _records()]
    callback = LoraDoctorCallback(quiet=True)
    trainer = Trainer(model=_peft_model(tiny_qwen3_dir), args=_args(tmp_path, 1),
                      train_dataset=rows, data_collator=_collator(tok), processing_class=tok,
                      callbacks=[callback])
    trainer.train()
    assert set(callback.report.summary["numerics"]["dtypes"]) == {"fp32"}
    assert callback.report.ok, [f.message for f in callback.report.errors]


def test_without_a_tokenizer_it_still_stops_labels_shifted_by_hand(tmp_path, qwen3_tokenizer,
                                                                   tiny_qwen3_dir):
    from transformers import Trainer
    tok = qwen3_tokenizer
    rows = [_encode(tok, r["conversations"]) for r in _records()]
    callback = _callback(on_error="raise")
    trainer = Trainer(model=_peft_model(tiny_qwen3_dir), args=_args(tmp_path, 4),
                      train_dataset=rows, data_collator=_collator(tok, shift=True),
                      callbacks=[callback])  # no processing_class, as many scripts do
    with pytest.raises(loradoctor.UnhealthyPipeline) as raised:
        trainer.train()
    report = raised.value.report
    assert [f.code for f in report.errors] == ["LD106"]
    assert trainer.state.global_step == 0
    skipped = {r.code: r.summary for r in report.results if r.status.value == "skip"}
    assert "needs a tokenizer with a chat template" in skipped["LD103"]


def test_a_tokenizer_given_to_the_callback_judges_the_labels(tmp_path, qwen3_tokenizer,
                                                             tiny_qwen3_dir):
    from transformers import Trainer
    tok = qwen3_tokenizer
    rows = [_encode(tok, r["conversations"]) for r in _records()]
    callback = _callback(on_error="raise", tokenizer=tok)
    trainer = Trainer(model=_peft_model(tiny_qwen3_dir), args=_args(tmp_path, 2),
                      train_dataset=rows, data_collator=_collator(tok), callbacks=[callback])
    trainer.train()
    assert trainer.state.global_step == 2
    assert {r.code: r.status.value for r in callback.report.results}["LD103"] == "pass"
