"""Benchmark: the whole `loradoctor check-model` process against a process that loads the same
model and runs one PEFT training step, on the real SmolLM2-135M-Instruct: peak memory and time.

    .venv/bin/python bench/bench_memory.py [--repeat 2] [--device cpu] [--dtypes fp32]

Both sides are whole processes, started fresh, measured the same way: each command runs as
the only child of a small wrapper process, which reads `resource.getrusage(RUSAGE_CHILDREN)
.ru_maxrss` after the child exits (the largest resident set the child ever had: imports, the
runtime, the model, everything). Nothing is reset or subtracted.

  (a) one PEFT training step: import torch/transformers/peft, load SmolLM2 in fp32 (as
      check-model loads it), build check-model's probe batch (4 x 128 tokens of SmolLM2's chat
      template over the built-in chat turns), apply PEFT LoRA r=8 / alpha=16 on all-linear,
      one forward with labels + backward + AdamW step;
  (b) `loradoctor check-model --model SMOLLM2 --peft r=8,lora_alpha=16,target_modules=all-linear
      --json`: every model rule, as a user runs it, in check-model's default dtypes
      (fp32, bf16, fp16) unless --dtypes names others.

Prints both peaks and the ratio b / a, and both wall times: (b) against (a)'s whole process
and against (a)'s training step alone (the step's own time, printed by (a)). With --repeat N
each side runs N times, alternating; the smallest peak and the shortest time of each side are
kept (the peak of a deterministic program varies only by allocator noise, its time by what
else the machine runs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEFT = "r=8,lora_alpha=16,target_modules=all-linear"

# Runs CMD as its only child; prints its exit code, peak RSS in KiB (Linux ru_maxrss unit),
# wall time in seconds, and the training step's own time where the child printed one.
WRAPPER = ("import resource, subprocess, sys, time\n"
           "start = time.perf_counter()\n"
           "p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, text=True)\n"
           "wall = time.perf_counter() - start\n"
           "step = [l.split()[1] for l in p.stdout.splitlines() if l.startswith('STEP ')]\n"
           "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, wall,\n"
           "      step[0] if step else 'nan')\n")

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
import time
start = time.perf_counter()
loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
             labels=batch["labels"]).loss
loss.backward()
opt.step()
opt.zero_grad(set_to_none=True)
print(f"STEP {time.perf_counter() - start:.3f}")
"""


def measured(cmd: list[str]) -> tuple[int, float, float]:
    """(peak RSS KiB, wall seconds, the step's own seconds or nan) of CMD as a whole process."""
    out = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.split()
    rc, peak, wall, step = int(out[0]), int(out[1]), float(out[2]), float(out[3])
    if rc not in (0, 1):
        raise SystemExit(f"{cmd[:4]} exited {rc}")
    return peak, wall, step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default=None, help="check-model's --dtypes (default: its own)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from loradoctor import assets
    model = str(assets.smollm2_dir())
    step_cmd = [sys.executable, "-c", TRAIN_STEP, model, args.device, PEFT]
    check_cmd = [sys.executable, "-m", "loradoctor", "check-model", "--model", model, "--peft",
                 PEFT, "--device", args.device, "--json"]
    if args.dtypes:
        check_cmd += ["--dtypes", args.dtypes]
    steps, checks = [], []
    for i in range(args.repeat):
        steps.append(measured(step_cmd))
        checks.append(measured(check_cmd))
        print(f"  run {i + 1}: training step process {steps[-1][0] / 1024:,.0f} MiB "
              f"{steps[-1][1]:.1f} s (step {steps[-1][2]:.2f} s), check-model "
              f"{checks[-1][0] / 1024:,.0f} MiB {checks[-1][1]:.1f} s", file=sys.stderr)
    a, b = min(s[0] for s in steps), min(c[0] for c in checks)
    ta, tb = min(s[1] for s in steps), min(c[1] for c in checks)
    step = min(s[2] for s in steps)
    dtypes = args.dtypes or "default (fp32,bf16,fp16)"
    result = {"train_step_peak_mib": round(a / 1024), "check_model_peak_mib": round(b / 1024),
              "ratio": round(b / a, 3), "train_step_process_s": round(ta, 2),
              "train_step_s": round(step, 3), "check_model_s": round(tb, 2),
              "time_ratio_process": round(tb / ta, 2), "time_ratio_step": round(tb / step, 2),
              "dtypes": dtypes, "runs": {"train_step": steps, "check_model": checks}}
    print(f"(a) one PEFT training step, whole process: {a / 1024:,.0f} MiB, {ta:.1f} s "
          f"(the step itself {step:.2f} s)")
    print(f"(b) loradoctor check-model --peft {PEFT}, dtypes {dtypes}, whole process: "
          f"{b / 1024:,.0f} MiB, {tb:.1f} s")
    print(f"memory b / a: {b / a:.2f} (target <= 1.2)")
    print(f"time b / a: {tb / ta:.2f} whole processes (target <= 3); b / the step alone: "
          f"{tb / step:.1f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
