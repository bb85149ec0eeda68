"""The callback's numbers on the run's own dashboards: a real Trainer reporting to TensorBoard.

Tiny Qwen3 (random weights, the real Qwen3 tokenizer), PEFT LoRA, CPU, a few steps with
`report_to=["tensorboard"]`; the event file TensorBoard wrote is read back with TensorBoard's
own reader: loradoctor's scalars at every logging step, and the gate's report in the text tab.
"""

from __future__ import annotations

import json

import pytest
import torch

from ..conftest import DATA

pytest.importorskip("tensorboard")
pytest.importorskip("peft")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]


def _rows(tok, supervise_reply=True):
    """Labels on each reply and its <|im_end|> (from the rendered text's offsets), or none."""
    rows = []
    for line in (DATA / "persona.jsonl").read_text().splitlines()[:8]:
        messages = json.loads(line)["conversations"]
        text = tok.apply_chat_template(messages, tokenize=False)
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        start = text.index("<|im_start|>assistant\n") + len("<|im_start|>assistant\n")
        end = text.index("<|im_end|>", start) + len("<|im_end|>")
        labels = [i if supervise_reply and b > start and a < end else -100
                  for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])]
        rows.append({"input_ids": enc["input_ids"], "labels": labels})
    return rows


def _collate(pad_id):
    def collate(features):
        n = max(len(f["input_ids"]) for f in features)
        out = {"input_ids": torch.full((len(features), n), pad_id),
               "labels": torch.full((len(features), n), -100),
               "attention_mask": torch.zeros((len(features), n), dtype=torch.long)}
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            out["input_ids"][i, :k] = torch.tensor(f["input_ids"])
            out["labels"][i, :k] = torch.tensor(f["labels"])
            out["attention_mask"][i, :k] = 1
        return out
    return collate


def _trainer(tmp_path, tok, model_dir, rows, callback, steps):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                      task_type="CAUSAL_LM"))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2,
                             max_steps=steps, logging_steps=1, report_to=["tensorboard"],
                             save_strategy="no", learning_rate=1e-2, use_cpu=True, seed=0,
                             disable_tqdm=True)
    return Trainer(model=model, args=args, train_dataset=rows,
                   data_collator=_collate(tok.pad_token_id), processing_class=tok,
                   callbacks=[callback])


def _events(folder):
    """What the run's TensorBoard event file holds (under output_dir/runs/, where the Trainer
    puts it by default)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = folder.rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
               for tag in acc.Tags()["scalars"]}
    texts = {tag: [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)]
             for tag in acc.Tags()["tensors"]}
    return scalars, texts


def test_a_healthy_run_puts_loradoctors_numbers_on_tensorboard_at_each_logging_step(
        tmp_path, qwen3_tokenizer, tiny_qwen3_dir):
    from loradoctor.integrations.transformers import LoraDoctorCallback

    tok = qwen3_tokenizer
    callback = LoraDoctorCallback(quiet=True, check_model=False)
    trainer = _trainer(tmp_path, tok, tiny_qwen3_dir, _rows(tok), callback, steps=6)
    trainer.train()
    scalars, texts = _events(tmp_path)

    assert callback.report.ok
    share = scalars["train/loradoctor/supervised_share"]
    assert [step for step, _ in share] == [0, 1, 2, 3, 4, 5, 6]  # the gate, then each step
    # The first two batches' supervised tokens (the replies) among their attended tokens.
    assert 0.2 < share[0][1] < 0.8 and all(v == share[0][1] for _, v in share)
    grad = scalars["train/loradoctor/grad_norm"]
    assert [s for s, _ in grad] == [1, 2, 3, 4, 5, 6] and all(v > 0 for _, v in grad)
    b_norm = [v for _, v in scalars["train/loradoctor/lora_B_norm"]]
    assert b_norm[0] == 0 and all(b > a for a, b in zip(b_norm, b_norm[1:]))  # B grows from 0
    growth = [v for _, v in scalars["train/loradoctor/lora_B_growth"]]
    assert growth == pytest.approx(b_norm)
    zero = [v for _, v in scalars["train/loradoctor/lora_B_zero"]]
    assert zero[0] > 0 and zero[-1] == 0
    assert "train/loss" in scalars  # beside the Trainer's own numbers
    assert not [t for t in scalars if t.startswith("train/loradoctor/LD")]  # no rule fired

    (step, text), = texts["train/loradoctor/report/text_summary"]
    assert step == 0 and "loradoctor · trainer start" in text and "LD101" in text
    assert "no problems found" in text
    # The Trainer's own record of its logs holds them too; the feeder left with the run.
    assert "loradoctor/grad_norm" in trainer.state.log_history[-2]
    assert not any(type(cb).__name__ == "LogFeeder" for cb in trainer.callback_handler.callbacks)


def test_a_run_the_gate_stops_shows_the_rule_that_fired_and_its_report(
        tmp_path, qwen3_tokenizer, tiny_qwen3_dir):
    import loradoctor
    from loradoctor.integrations.transformers import LoraDoctorCallback

    tok = qwen3_tokenizer
    callback = LoraDoctorCallback(quiet=True, check_model=False)
    trainer = _trainer(tmp_path, tok, tiny_qwen3_dir, _rows(tok, supervise_reply=False),
                       callback, steps=3)
    with pytest.raises(loradoctor.UnhealthyPipeline):
        trainer.train()
    scalars, texts = _events(tmp_path)

    assert scalars["train/loradoctor/supervised_share"] == [(0, 0.0)]
    assert scalars["train/loradoctor/LD101"] == [(0, 1.0)]
    (_, text), = texts["train/loradoctor/report/text_summary"]
    assert "LD101" in text and "exit 1" in text
