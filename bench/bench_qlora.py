"""Benchmark: the gate on a QLoRA model against QLoRA training steps, on the real
SmolLM2-135M-Instruct loaded in 4-bit (bitsandbytes NF4, bf16 compute, CPU or --device), side by side in
one run.

    .venv/bin/python bench/bench_qlora.py [--steps 8] [--device cpu|cuda]

The model is built as QLoRA guides build it: `load_model(..., quantize="4bit")` (the
`BitsAndBytesConfig` of `check-model --quantize 4bit`), `prepare_model_for_kbit_training`
(gradient checkpointing on, the input-require-grads hook, norms upcast to fp32), then
`get_peft_model` with r=8, alpha 16 on every linear layer.

(a) QLoRA training steps on a batch of 4 x 128 tokens of SmolLM2's chat template: forward
    with labels, backward, AdamW step, zero_grad; two untimed warm-up steps, then the median
    of `--steps`.
(b) `loradoctor.check(model=<the live QLoRA model>, tokenizer=..., dtypes="fp32")`, what the
    gate and the Trainer callback run, before any training step; timed once, and printed as
    a number of the training steps of (a), with its slowest checks.

Excluded from every timer: imports and loading the model and tokenizer.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def qlora_model(model_dir, device: str = "cpu"):
    """SmolLM2 in 4-bit NF4 with PEFT LoRA on every linear layer, as QLoRA guides build it."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from loradoctor.inputs.pretrained import load_model

    model = prepare_model_for_kbit_training(load_model(model_dir, "fp32", device, "4bit"))
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))


def chat_batch(tok, rows: int = 4, tokens: int = 128) -> dict:
    """(rows, tokens) of SmolLM2's chat template over the built-in conversations, as labels too."""
    import torch

    from loradoctor.model.probe import BUILTIN_CONVERSATIONS

    text = "".join(tok.apply_chat_template(c, tokenize=False) for c in BUILTIN_CONVERSATIONS)
    stream = tok(text, add_special_tokens=False)["input_ids"]
    while len(stream) < rows * tokens:
        stream = stream + stream
    ids = torch.tensor(stream[:rows * tokens]).view(rows, tokens)  # (B, T)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8, help="timed training steps")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda for bitsandbytes' GPU kernels")
    args = ap.parse_args()

    import torch

    import loradoctor
    from loradoctor import assets
    from loradoctor.inputs.pretrained import load_tokenizer

    torch.manual_seed(0)
    model_dir = assets.smollm2_dir()
    tok = load_tokenizer(model_dir)
    model = qlora_model(model_dir, args.device)
    batch = {k: v.to(args.device) for k, v in chat_batch(tok).items()}
    start = time.perf_counter()  # the gate first, as at train start: a fresh adapter (B zero)
    report = loradoctor.check(model=model, tokenizer=tok, dtypes="fp32")
    t_gate = time.perf_counter() - start

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def step() -> float:
        sync()
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - start

    for _ in range(2):
        step()
    t_step = statistics.median(step() for _ in range(args.steps))

    where = (torch.cuda.get_device_name() if args.device.startswith("cuda")
             else f"CPU ({torch.get_num_threads()} threads)")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    slowest = sorted(report.results, key=lambda r: -r.duration_s)[:4]
    print(f"SmolLM2-135M-Instruct in 4-bit NF4 (bf16 compute), QLoRA r=8 all-linear "
          f"({trainable:,} trainable), batch 4x128, {where}, "
          f"torch {torch.__version__}")
    print(f"(a) QLoRA training step, median of {args.steps}: {t_step:.3f} s")
    print(f"(b) gate on the live QLoRA model (every check-model rule, fp32): {t_gate:.1f} s = "
          f"{t_gate / t_step:.1f} training steps; {len(report.results)} checks, "
          f"exit {report.exit_code}, findings "
          f"{[f'{f.code} {f.severity.value}' for f in report.findings] or 'none'}")
    print("    slowest checks: " + ", ".join(f"{r.code} {r.duration_s:.1f} s" for r in slowest))


if __name__ == "__main__":
    main()
