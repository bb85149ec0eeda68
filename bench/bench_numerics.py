"""Benchmark: the numerics check (LD3xx) against plain training steps, on the real SmolLM2-135M.

    python bench/bench_numerics.py [--device cpu] [--batch 4 --tokens 128] [--dtypes fp32,bf16,fp16]

In one process, on the same probe batch (check-model's default: 4 x 128 tokens of chat text
through SmolLM2's template) and the same LoRA (MiniMind-style, rank 8, every Linear but
lm_head):

- one plain training step (forward with labels + backward) per dtype, each on a model loaded
  and adapted in that dtype; fp32 and bf16 get one untimed warm-up step first (fp16 does not:
  on CPU its step takes a minute and its cold-start cost is a few seconds of that);
- the numerics check through the engine, with only the LD3 rules selected, on a model loaded in
  fp32 and adapted (as check-model has it), after the plain steps, so its kernels are warm too.

It prints the time ratio (target <= 1.3 of the sum of the per-dtype plain steps) and the peak
memory ratio against the plain fp32 step (target <= 1.5). On CPU, peak memory is the
process's peak resident set (VmHWM, reset through /proc/self/clear_refs after `gc` and
`malloc_trim`) minus the resident set before any model was loaded, so it counts the model,
its activations and any cast copy; on CUDA it is torch's peak allocated memory.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from loradoctor import assets, engine, registry  # noqa: E402
from loradoctor.context import ModelContext  # noqa: E402
from loradoctor.inputs.pretrained import load_model

SPEC = f"{ROOT / 'fixtures' / 'pipelines' / 'minimind_lora.py'}:apply_lora_default_args"
LORA = {"rank": 8, "alpha": 16}


# --- memory ------------------------------------------------------------------------------------


def _status(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) * 1024


def settle() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class Peak:
    """Peak memory of a block, above `base` (CPU: resident set; CUDA: allocated)."""

    def __init__(self, device: str, base: int):
        self.device, self.base, self.bytes = device, base, 0

    def __enter__(self):
        settle()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        return self

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.base
        else:
            self.bytes = _status("VmHWM") - self.base
        return False


def resident(device: str) -> int:
    settle()
    if device.startswith("cuda"):
        return torch.cuda.memory_allocated()
    return _status("VmRSS")


# --- the two things compared -------------------------------------------------------------------


def adapted_model(model_dir: Path, dtype: str, device: str):
    """A model loaded in `dtype` with the LoRA attached and cast to `dtype` as well."""
    sys.path.insert(0, str(ROOT / "fixtures" / "pipelines"))
    from minimind_lora import apply_lora_default_args

    torch.manual_seed(0)
    model = load_model(model_dir, dtype, device)
    apply_lora_default_args(model, **LORA)
    return model.to(load_dtype(dtype))


def load_dtype(name: str):
    from loradoctor.inputs.pretrained import torch_dtype
    return torch_dtype(name)


def plain_step(model, probe: dict, device: str) -> float:
    """One forward with labels and backward; seconds."""
    _sync(device)
    start = time.perf_counter()
    out = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"],
                labels=probe["labels"], use_cache=False)
    out.loss.backward()
    _sync(device)
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--dtypes", default="fp32,bf16,fp16")
    parser.add_argument("--repeats", type=int, default=2,
                        help="alternate plain steps and the check this many times; the best "
                             "of each side is compared (default 2)")
    args = parser.parse_args()
    dtypes = tuple(d.strip() for d in args.dtypes.split(","))
    model_dir = assets.smollm2_dir()

    # The probe batch exactly as check-model builds it (chat text through SmolLM2's template).
    ctx0 = ModelContext(model_dir, device=args.device, probe_shape=(args.batch, args.tokens))
    probe = {k: v for k, v in ctx0.probe.items()}
    source = probe.pop("source")
    del ctx0
    base = resident(args.device)
    rules = registry.select(registry.MODEL_RULES, ["LD3"])

    steps: dict[str, list[float]] = {}
    peaks: dict[str, int] = {}
    checks: list[tuple[float, dict]] = []
    check_peak = 0
    for rep in range(args.repeats):
        for dtype in ("fp32", *[d for d in dtypes if d != "fp32"]):
            model = adapted_model(model_dir, dtype, args.device)
            if dtype != "fp16" or args.device != "cpu":
                plain_step(model, probe, args.device)  # warm-up, untimed
            with Peak(args.device, base) as peak:
                steps.setdefault(dtype, []).append(plain_step(model, probe, args.device))
            # the smallest plain peak and the largest check peak: the ratio errs against us
            peaks[dtype] = min(peaks.get(dtype, peak.bytes), peak.bytes)
            print(f"[{rep + 1}/{args.repeats}] plain step {dtype}: {steps[dtype][-1]:.2f}s, "
                  f"peak {peak.bytes / 2**20:,.0f} MiB", flush=True)
            del model
            settle()

        ctx = ModelContext(model_dir, apply_spec=SPEC, apply_kwargs=dict(LORA), dtypes=dtypes,
                           device=args.device, probe_shape=(args.batch, args.tokens))
        ctx.validate_inputs()  # loads and adapts the model, builds the probe: not the check
        _ = ctx.probe
        with Peak(args.device, base) as peak:
            _sync(args.device)
            start = time.perf_counter()
            report = engine.run("check-model", rules, ctx)
            _sync(args.device)
            check_s = time.perf_counter() - start
        check_peak = max(check_peak, peak.bytes)
        m = ctx.memo("numerics", lambda: None)
        checks.append((check_s, {d: p.seconds for d, p in m.passes.items()}))
        print(f"[{rep + 1}/{args.repeats}] numerics check: {check_s:.2f}s "
              f"(passes: {', '.join(f'{d} {t:.2f}s' for d, t in checks[-1][1].items())}), "
              f"peak {peak.bytes / 2**20:,.0f} MiB", flush=True)
        del ctx, m
        settle()

    # The best of the repeats on each side: the machine's noise only ever adds time.
    checked = [d for d in ("fp32", "bf16", "fp16") if d in checks[0][1]]
    best = {d: min(steps[d]) for d in checked}
    check_s, passes = min(checks, key=lambda c: c[0])
    plain_sum = sum(best.values())
    time_ratio = check_s / plain_sum
    mem_ratio = check_peak / peaks["fp32"]

    print()
    print(f"SmolLM2-135M-Instruct + MiniMind LoRA r=8 on {args.device} "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}); probe {tuple(probe['input_ids'].shape)}: {source}")
    print(f"{'dtype':<6} {'plain step':>11} {'check pass':>11} {'plain peak':>11}")
    for d in checked:
        print(f"{d:<6} {best[d]:>10.2f}s {passes[d]:>10.2f}s {peaks[d] / 2**20:>7,.0f} MiB")
    print(f"numerics check (LD3 rules, engine): {check_s:.2f}s vs sum of plain steps "
          f"{plain_sum:.2f}s -> time ratio {time_ratio:.2f} (target <= 1.3)")
    print(f"peak memory: check {check_peak / 2**20:,.0f} MiB vs plain fp32 step "
          f"{peaks['fp32'] / 2**20:,.0f} MiB -> ratio {mem_ratio:.2f} (target <= 1.5)")
    figures = report.summary["numerics"]
    print(f"largest fp32 activation: {figures['fp32_peak']:,.0f} at {figures['fp32_peak_module']} "
          f"(fp16 headroom {figures['fp16_headroom']:.2f}x)")
    print(f"verdict: {figures['verdict']}")
    statuses = {r.code: r.status.value for r in report.results}
    print(f"rules: {statuses}")
    return 0 if time_ratio <= 1.3 and mem_ratio <= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
