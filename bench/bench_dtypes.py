"""Benchmark: what the numerics' dtypes cost a whole check-model process on a CPU, emulated
against torch's own CPU kernels.

    .venv/bin/python bench/bench_dtypes.py [--repeat 2] [--model tiny-qwen3|smollm2]

Each side is `loradoctor check-model --model MODEL --peft r=8,lora_alpha=16,
target_modules=all-linear --json` as a user runs it, a fresh process each time (imports,
loading, every model rule), alternating, the shortest wall time of each kept:

  (a) `--dtypes fp32`: no low-precision pass;
  (b) the default dtypes (fp32, bf16, fp16), fp16 (and bf16 where the CPU has no native bf16)
      emulated: matmuls and attention in fp32 on the dtype's values, rounded to the dtype;
  (c) the default dtypes with `--real-dtypes`: torch's own CPU fp16/bf16 kernels.

Prints each time, (b) / (a) and (c) / (a), and whether the three reports agree on every
finding (code, severity, location) and check status.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEFT = "r=8,lora_alpha=16,target_modules=all-linear"


def run(cmd: list[str]) -> tuple[float, dict]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd[3:])} exited {proc.returncode}: {proc.stderr[-800:]}")
    return wall, json.loads(proc.stdout)


def judgement(report: dict) -> tuple:
    return (sorted((f["code"], f["severity"], f["location"] or "") for f in report["findings"]),
            sorted((c["code"], c["status"]) for c in report["checks"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--model", choices=("tiny-qwen3", "smollm2"), default="tiny-qwen3")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from loradoctor import assets
    model = str(assets.tiny_qwen3_dir() if args.model == "tiny-qwen3" else assets.smollm2_dir())
    base = [sys.executable, "-m", "loradoctor", "check-model", "--model", model, "--peft", PEFT,
            "--json"]
    sides = {"(a) --dtypes fp32": base + ["--dtypes", "fp32"],
             "(b) default dtypes, emulated": base,
             "(c) default dtypes, --real-dtypes": base + ["--real-dtypes"]}
    times: dict[str, list[float]] = {k: [] for k in sides}
    reports: dict[str, dict] = {}
    for i in range(args.repeat):
        for name, cmd in sides.items():
            wall, reports[name] = run(cmd)
            times[name].append(wall)
            print(f"  run {i + 1}: {name} {wall:.1f} s", file=sys.stderr)
    best = {k: min(v) for k, v in times.items()}
    a = best["(a) --dtypes fp32"]
    print(f"check-model on {args.model} with PEFT {PEFT}, whole processes, best of "
          f"{args.repeat}; {os.cpu_count()} CPU cores")
    for name, t in best.items():
        print(f"{name:38s} {t:6.1f} s  {t / a:5.2f}x (a)")
    b, c = reports["(b) default dtypes, emulated"], reports["(c) default dtypes, --real-dtypes"]
    print(f"(b) and (c) judge the same: {judgement(b) == judgement(c)}; numerics measured "
          f"{b['summary']['numerics'].get('emulated')} emulated in (b), "
          f"{c['summary']['numerics'].get('emulated')} in (c)")
    print(json.dumps({"seconds": best, "b_over_a": round(best['(b) default dtypes, emulated'] / a, 2),
                      "c_over_a": round(best['(c) default dtypes, --real-dtypes'] / a, 2)}))


if __name__ == "__main__":
    main()
