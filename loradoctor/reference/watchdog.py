"""Reference run for the watchdog: a Trainer run that goes wrong mid-run while its logs look fine.

A real `transformers.Trainer` fine-tunes LoRA adapters (PEFT, rank 4, every linear layer) on a
tiny Qwen3 with the real Qwen3 tokenizer, reading a streamed dataset in order. From the 9th
sample on, the rows supervise no token (a preprocessing step that dropped every label), so
from step 5 the model's loss is NaN and nothing trains. The Trainer's logs do not say so: its
`logging_nan_inf_filter` and `num_items_in_batch` bookkeeping log such a step as a finite
number. The same run with `LoraDoctorCallback(on_error="stop")` stops at that step and names
it (LD420); the gate at train start passes, since the first batches are healthy.
"""

from __future__ import annotations

import math

from .runs import ReferenceRun, RunOutcome

STEPS = 10
BATCH = 2
HEALTHY_ROWS = 8  # rows 0..7 supervise the reply; the rest supervise nothing
LR = 1e-3
SEED = 0


def _rows(tokenizer) -> list[dict]:
    from .masking import DATA, fixtures_dir

    import json
    records = [json.loads(line) for line in (fixtures_dir() / DATA).read_text().splitlines()
               if line.strip()]
    rows = []
    for i, rec in enumerate(records):
        text = tokenizer.apply_chat_template(rec["conversations"], tokenize=False)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, labels = enc["input_ids"], [-100] * len(enc["input_ids"])
        if i < HEALTHY_ROWS:
            header = "<|im_start|>assistant\n"
            start = text.index(header) + len(header)
            end = text.index("<|im_end|>", start) + len("<|im_end|>")
            labels = [t if b > start and a < end else -100
                      for t, (a, b) in zip(ids, enc["offset_mapping"])]
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def _collate(pad_id: int):
    import torch

    def collate(features):
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), pad_id)  # (B, T)
        labels = torch.full((len(features), width), -100)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n], labels[row, :n] = torch.tensor(f["input_ids"]), torch.tensor(f["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
    return collate


def _train(tokenizer, rows, callback, out_dir) -> tuple[list[float], list[float], int]:
    """(the model's own loss per step, the Trainer's logged loss per step, steps run)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from ..assets import tiny_qwen3_dir
    from ..inputs.pretrained import load_model

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(rows)

    torch.manual_seed(SEED)
    model = get_peft_model(load_model(tiny_qwen3_dir(), "fp32", "cpu"),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                      task_type="CAUSAL_LM"))
    own: list[float] = []
    hook = model.register_forward_hook(
        lambda m, i, out: own.append(float(out.loss)) if m.training and out.loss is not None
        else None)
    args = TrainingArguments(output_dir=str(out_dir), per_device_train_batch_size=BATCH,
                             max_steps=STEPS, logging_steps=1, report_to=[], save_strategy="no",
                             learning_rate=LR, use_cpu=True, seed=SEED, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Stream(),
                      data_collator=_collate(tokenizer.pad_token_id), processing_class=tokenizer,
                      callbacks=[callback] if callback else [])
    trainer.train()
    hook.remove()
    logged = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
    return own, logged, trainer.state.global_step


def run_watchdog() -> RunOutcome:
    """A Trainer run whose loss goes NaN mid-run: its logs stay finite; the callback stops it.

    The same LoRA run twice on a streamed dataset whose rows from the 9th on supervise nothing:
    without the callback it runs all its steps, the model's own loss is NaN from step 5 and
    the Trainer logs a finite number for each of those steps; with
    `LoraDoctorCallback(on_error="stop")` it stops at step 5 with LD420 naming the step.
    """
    import contextlib
    import io
    import tempfile

    from ..integrations.transformers import LoraDoctorCallback
    from ..inputs.pretrained import load_tokenizer
    from ..assets import qwen3_tokenizer_dir

    tokenizer = load_tokenizer(qwen3_tokenizer_dir())
    rows = _rows(tokenizer)
    callback = LoraDoctorCallback(on_error="stop", quiet=True, check_model=False)
    with tempfile.TemporaryDirectory(prefix="loradoctor-ref-") as tmp, \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        own, logged, steps = _train(tokenizer, rows, None, tmp)
        own_cb, _, steps_cb = _train(tokenizer, rows, callback, tmp)
    first_nan = next((i + 1 for i, v in enumerate(own) if not math.isfinite(v)), None)
    stop = [f for f in callback.report.errors if f.code == "LD420"]
    stopped_at = stop[0].evidence["step"] if stop else None
    hidden = first_nan is not None and all(math.isfinite(v) for v in logged)
    verdict = [
        f"without the callback: {steps} steps; the model's loss is nan from step {first_nan} "
        f"({sum(not math.isfinite(v) for v in own)} of {len(own)} steps), the Trainer logged "
        f"{', '.join(f'{v:.3g}' for v in logged[(first_nan or 1) - 1:][:3])} ... for them",
        f"with LoraDoctorCallback(on_error='stop'): stopped at step {stopped_at} "
        f"({steps_cb} steps run): " + (stop[0].message if stop else "no stop"),
        f"trained: PEFT LoRA r=4 on every linear layer of a tiny Qwen3, real Qwen3 tokenizer, "
        f"batch {BATCH}, lr {LR}, streamed rows in order ({HEALTHY_ROWS} healthy, then none "
        f"supervised)",
    ]
    return RunOutcome(
        curves={"model loss, no callback": own, "Trainer log, no callback": logged,
                "model loss, with callback": own_cb},
        # Before training the gate sees the healthy first batches: nothing to flag yet.
        flagged={"the first batches": [f.code for f in callback.report.errors
                                                         if not f.code.startswith("LD42")]},
        verdict=verdict, flagged_when="at train start (the callback's gate)",
        reproduced=hidden and stopped_at == first_nan and steps_cb == stopped_at
                    and not any(not f.code.startswith("LD42") for f in callback.report.errors))


RUNS = [ReferenceRun(name="watchdog",
                     title="a NaN mid-run that a Trainer's logs hide, stopped by the callback",
                     run=run_watchdog)]
