"""Benchmark: the gate and the per-step watchdog against LoRA training steps, on the real
SmolLM2-135M-Instruct (fp32, CPU), measured side by side in one run.

    .venv/bin/python bench/bench_gate.py [--steps 20] [--train-steps 6]

(a) training steps of a PEFT LoRA model (r=8, alpha 16, every linear layer; batch 4 x 128
    tokens of SmolLM2's chat template): forward with labels, backward, AdamW step, zero_grad.
    Timed steps alternate between plain steps and steps that also call `watch.step(loss)`
    (the Watchdog the Trainer callback uses, reading the loss and the trainable gradients'
    norm), after two untimed warm-up steps; the medians of each are compared.
(b) `loradoctor.check(model=<the live PEFT model>, tokenizer=..., dtypes="fp32")` (what
    `gate` runs) before any training step, as at the top of a training script: every
    check-model rule on the live model (no data rules), timed once, compared with
    `--train-steps` (6) training steps of the same model: the issue's budget.

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20, help="timed steps of each kind")
    ap.add_argument("--train-steps", type=int, default=6, help="the gate's budget in steps")
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model

    import loradoctor
    from loradoctor import assets
    from loradoctor.inputs.pretrained import load_model, load_tokenizer
    from loradoctor.model.probe import BUILTIN_CONVERSATIONS

    torch.manual_seed(0)
    model_dir = assets.smollm2_dir()
    tok = load_tokenizer(model_dir)
    model = get_peft_model(load_model(model_dir, "fp32", "cpu"),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                      task_type="CAUSAL_LM"))
    text = "".join(tok.apply_chat_template(c, tokenize=False) for c in BUILTIN_CONVERSATIONS)
    stream = tok(text, add_special_tokens=False)["input_ids"]
    while len(stream) < 4 * 128:
        stream = stream + stream
    ids = torch.tensor(stream[:4 * 128]).view(4, 128)  # (B, T)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    # The gate first, as at the top of a training script: a fresh adapter (B zero).
    start = time.perf_counter()
    report = loradoctor.check(model=model, tokenizer=tok, dtypes="fp32")
    t_gate = time.perf_counter() - start

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    watch = loradoctor.Watchdog(model, on_error="warn")

    def step(watched: bool) -> float:
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        if watched:
            watch.step(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    for _ in range(2):
        step(False)
    plain, watched = [], []
    for i in range(2 * args.steps):
        (watched if i % 2 else plain).append(step(bool(i % 2)))
    # The watchdog's own share, measured directly on the same steps.
    overhead = []
    for _ in range(args.steps):
        loss = model(**batch).loss
        loss.backward()
        start = time.perf_counter()
        watch.step(loss)
        overhead.append(time.perf_counter() - start)
        opt.zero_grad(set_to_none=True)
    t_plain, t_watched = statistics.median(plain), statistics.median(watched)
    t_over = statistics.median(overhead)

    budget = args.train_steps * t_plain

    print(f"SmolLM2-135M-Instruct, PEFT LoRA r=8 all-linear, batch 4x128, fp32, CPU "
          f"({torch.get_num_threads()} threads), torch {torch.__version__}")
    print(f"(a) training step, median of {args.steps}: plain {t_plain:.3f} s, with "
          f"watch.step {t_watched:.3f} s (x{t_watched / t_plain:.3f})")
    print(f"    watch.step alone, median of {args.steps}: {t_over * 1000:.2f} ms = "
          f"{100 * t_over / t_plain:.2f}% of a step (target <= 2%)")
    print(f"(b) gate on the live model (every check-model rule, fp32): {t_gate:.1f} s = "
          f"{t_gate / t_plain:.1f} training steps (budget {args.train_steps} steps = "
          f"{budget:.1f} s); {len(report.results)} checks, exit {report.exit_code}")


if __name__ == "__main__":
    main()
