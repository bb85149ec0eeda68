"""Benchmark: the peak memory of the whole `loradoctor check-model` process against a process
that loads the same model and runs one PEFT training step, on the real SmolLM2-135M-Instruct.

    .venv/bin/python bench/bench_memory.py [--repeat 2] [--device cpu]

Both sides are whole processes, started fresh, measured the same way: each command runs as
the only child of a small wrapper process, which reads `resource.getrusage(RUSAGE_CHILDREN)
.ru_maxrss` after the child exits (the largest resident set the child ever had: imports, the
runtime, the model, everything). Nothing is reset or subtracted.

  (a) one PEFT training step: import torch/transformers/peft, load SmolLM2 in fp32 (as
      check-model loads it), build check-model's probe batch (4 x 128 tokens of SmolLM2's chat
      template over the built-in chat turns), apply PEFT LoRA r=8 / alpha=16 on all-linear,
      one forward with labels + backward + AdamW step;
  (b) `loradoctor check-model --model SMOLLM2 --peft r=8,lora_alpha=16,target_modules=all-linear
      --dtypes fp32 --json`: every model rule, as a user runs it.

Prints both peaks and the ratio b / a (the issue's target: at most 1.5, goal 1.3). With
--repeat N each side runs N times, alternating, and the smallest peak of each is kept (the
peak of a deterministic program varies only by allocator noise).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEFT = "r=8,lora_alpha=16,target_modules=all-linear"

# Runs CMD as its only child and prints the child's peak RSS in KiB (Linux ru_maxrss unit).
WRAPPER = ("import resource, subprocess, sys\n"
           "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
           "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")

TRAIN_STEP = """
import sys, warnings
warnings.filterwarnings("ignore")
import torch
from peft import LoraConfig, get_peft_model
from loradoctor.context import ModelContext
from loradoctor.inputs.specs import parse_peft
ctx = ModelContext(sys.argv[1], device=sys.argv[2])
model, batch = ctx.base_model, ctx.probe          # SmolLM2 fp32, check-model's probe batch
model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **{
    **parse_peft(sys.argv[3]), "target_modules": "all-linear"}))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
model.train()
loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
             labels=batch["labels"]).loss
loss.backward()
opt.step()
opt.zero_grad(set_to_none=True)
"""


def peak_kib(cmd: list[str]) -> int:
    out = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.split()
    rc, peak = int(out[0]), int(out[1])
    if rc not in (0, 1):
        raise SystemExit(f"{cmd[:4]} exited {rc}")
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from loradoctor import assets
    model = str(assets.smollm2_dir())
    step_cmd = [sys.executable, "-c", TRAIN_STEP, model, args.device, PEFT]
    check_cmd = [sys.executable, "-m", "loradoctor", "check-model", "--model", model, "--peft",
                 PEFT, "--dtypes", "fp32", "--device", args.device, "--json"]
    steps, checks = [], []
    for i in range(args.repeat):
        steps.append(peak_kib(step_cmd))
        checks.append(peak_kib(check_cmd))
        print(f"  run {i + 1}: training step {steps[-1] / 1024:,.0f} MiB, check-model "
              f"{checks[-1] / 1024:,.0f} MiB", file=sys.stderr)
    a, b = min(steps), min(checks)
    result = {"train_step_peak_mib": round(a / 1024), "check_model_peak_mib": round(b / 1024),
              "ratio": round(b / a, 3), "runs": {"train_step": steps, "check_model": checks}}
    print(f"(a) one PEFT training step, whole process: {a / 1024:,.0f} MiB")
    print(f"(b) loradoctor check-model --peft {PEFT} --dtypes fp32, whole process: "
          f"{b / 1024:,.0f} MiB")
    print(f"ratio b / a: {b / a:.2f} (target <= 1.5, goal <= 1.3)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
