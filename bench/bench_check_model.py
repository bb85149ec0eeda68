"""Benchmark: the whole check-model (LD2xx, LD4xx, LD5xx) against one LoRA training step, on the
real SmolLM2-135M-Instruct (fp32, CPU unless --device says otherwise).

    .venv/bin/python bench/bench_check_model.py [--steps 3] [--all-rules] [--device cpu]

One run of this script measures both sides, each in its own fresh child process (so neither
inherits the other's allocator state), on the same model directory, the same probe batch
(check-model's default: 4 x 128 tokens of SmolLM2's chat template over built-in chat turns)
and the same LoRA code (MiniMind-style, `loradoctor.reference.minimind:apply_lora_fixed`,
rank 8, alpha 16, every Linear but lm_head):

  (a) one LoRA training step: forward with labels + backward + AdamW step + zero_grad, after
      one untimed warm-up step; the median of --steps timed steps;
  (b) check-model through the engine, in process, exactly as the CLI runs it: validate the
      inputs (probe batch, base logits, the user's apply function) and run the rules, with
      `--dtypes fp32`. By default only this issue's rules are selected (`--select LD2,LD4,LD5`
      equivalent); `--all-rules` adds the numerics rules (LD3xx). No `--train-steps`.

Excluded from both timers: imports and loading the model (and tokenizer) from disk. Not
excluded: LD501/LD502 load a *fresh copy* of the base model from disk and re-run the apply
function on it (that is part of the check); its time is printed separately.

Memory: peak resident set size. In each child, after imports and model loading, the
process's RSS high-water mark is reset (writing 5 to /proc/self/clear_refs) and the current
RSS recorded; after the phase, VmHWM is read. The script prints the absolute peak (what the
machine must have: model, runtime, activations, copies) and the growth above the loaded
model (what the phase itself adds), and the ratio of each. CPU tensors live in RSS, so this
counts every allocation, torch's included.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SPEC = "loradoctor.reference.minimind:apply_lora_fixed"
LORA_KW = {"rank": 8, "alpha": 16}


def _status(key: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> int:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    return _status("VmRSS")


def child_train(args) -> dict:
    import torch

    from loradoctor import assets
    from loradoctor.context import ModelContext
    from loradoctor.inputs.pretrained import load_model
    from loradoctor.inputs.specs import load_spec

    model_dir = assets.smollm2_dir()
    model = load_model(model_dir, "fp32", args.device)
    probe = ModelContext(model_dir, device=args.device).probe  # check-model's own probe batch
    load_spec(SPEC)(model, **LORA_KW)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def step():
        out = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"],
                    labels=probe["labels"])
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return float(out.loss)

    base_rss = _reset_peak()
    step()  # warm-up
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    peak = _status("VmHWM")
    return {"times": times, "median": statistics.median(times), "peak_rss": peak,
            "base_rss": base_rss, "growth": peak - base_rss,
            "trainable": sum(p.numel() for p in params),
            "probe": list(probe["input_ids"].shape), "source": probe["source"]}


def child_check(args) -> dict:
    from loradoctor import assets, engine, registry
    from loradoctor.context import ModelContext

    model_dir = assets.smollm2_dir()
    ctx = ModelContext(model_dir, apply_spec=SPEC, apply_kwargs=dict(LORA_KW), dtypes=("fp32",),
                       device=args.device)
    _ = ctx.base_model, ctx.tokenizer  # model and tokenizer loading: outside the timer
    fresh = {"n": 0, "s": 0.0}
    original = ctx.fresh_base_model

    def timed_fresh():
        t = time.perf_counter()
        try:
            return original()
        finally:
            fresh["n"] += 1
            fresh["s"] += time.perf_counter() - t
    ctx.fresh_base_model = timed_fresh
    select = [] if args.all_rules else ["LD2", "LD4", "LD5"]
    rules = registry.select(registry.MODEL_RULES, select)
    base_rss = _reset_peak()
    t = time.perf_counter()
    ctx.validate_inputs()  # probe batch, base logits, the user's apply function
    t_inputs = time.perf_counter() - t
    report = engine.run("check-model", rules, ctx)
    total = time.perf_counter() - t
    peak = _status("VmHWM")
    return {"total": total, "inputs": t_inputs, "fresh_load": fresh["s"], "fresh_loads": fresh["n"],
            "peak_rss": peak, "base_rss": base_rss, "growth": peak - base_rss,
            "exit_code": report.exit_code,
            "rules": [r.code for r in rules],
            "checks": {r.code: round(r.duration_s, 3) for r in report.results},
            "findings": [f"{f.code} {f.severity.value}" for f in report.findings]}


def run_child(kind: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--steps", str(args.steps),
           "--device", args.device] + (["--all-rules"] if args.all_rules else [])
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3, help="timed training steps (median)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--all-rules", action="store_true", help="include the numerics rules (LD3xx)")
    p.add_argument("--child", choices=["train", "check"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        import warnings
        warnings.filterwarnings("ignore")
        out = child_train(args) if args.child == "train" else child_check(args)
        print(json.dumps(out))
        return

    import platform

    import torch
    train = run_child("train", args)
    check = run_child("check", args)
    mb = 1 / 2**20
    rules = "LD2,LD4,LD5" if not args.all_rules else "all check-model rules (LD2-LD5)"
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__} "
          f"(threads {torch.get_num_threads()}), Python {platform.python_version()}, "
          f"device {args.device}")
    print(f"model: SmolLM2-135M-Instruct fp32; probe batch {train['probe']} ({train['source']}); "
          f"LoRA r=8 on every Linear but lm_head ({train['trainable']:,} trainable)")
    print()
    print(f"(a) one LoRA training step (fwd+bwd+AdamW), median of {args.steps}: "
          f"{train['median']:.2f} s  (steps: {', '.join(f'{t:.2f}' for t in train['times'])})")
    print(f"(b) check-model, {rules}, --dtypes fp32: {check['total']:.2f} s "
          f"(inputs: probe + base logits + apply {check['inputs']:.2f} s; fresh copy reloaded "
          f"from disk {check['fresh_loads']}x in {check['fresh_load']:.2f} s; exit {check['exit_code']})")
    slow = sorted(check["checks"].items(), key=lambda kv: -kv[1])[:6]
    print("    slowest checks: " + ", ".join(f"{c} {s:.2f} s" for c, s in slow))
    print(f"    time ratio b/a: {check['total'] / train['median']:.2f}  (target <= 6)")
    print()
    print(f"peak RSS, absolute:   step {train['peak_rss'] * mb:,.0f} MiB, check-model "
          f"{check['peak_rss'] * mb:,.0f} MiB -> ratio {check['peak_rss'] / train['peak_rss']:.2f}"
          f"  (target <= 1.5)")
    print(f"peak RSS growth over the loaded model: step {train['growth'] * mb:,.0f} MiB, "
          f"check-model {check['growth'] * mb:,.0f} MiB -> ratio "
          f"{check['growth'] / max(train['growth'], 1):.2f}")
    if check["findings"]:
        print(f"findings: {', '.join(check['findings'])}")


if __name__ == "__main__":
    main()
