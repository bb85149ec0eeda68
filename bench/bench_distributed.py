"""The gate on two processes against the gate on one: the model check is not paid twice.

    python bench/bench_distributed.py [--repeat N]

Runs `loradoctor.gate(model=..., tokenizer=..., dataset=...)` (tiny Qwen3 with PEFT LoRA, the
real Qwen3 tokenizer, the persona data, dtypes fp32) under `torchrun` with one process, with
two (the default: rank 0 checks the model, every rank its own data) and with two and
`every_rank=True` (each rank checks the model too), DDP on gloo, on the CPU. Each rank times
its own `gate()` call; the script prints each setting's slowest rank and the ratios to one
process. Process start-up and imports are not in the figures.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(every_rank: bool) -> None:
    """One rank: build the pipeline, time the gate, print `GATE rank seconds`."""
    import torch
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import loradoctor
    from loradoctor import assets
    sys.path.insert(0, str(ROOT / "fixtures" / "pipelines"))
    import minimind_dataset

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(assets.qwen3_tokenizer_dir())
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(assets.tiny_qwen3_dir()),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                      task_type="CAUSAL_LM"))
    data = minimind_dataset.LoRADatasetFixed(tokenizer, str(ROOT / "fixtures" / "data" /
                                                            "persona.jsonl"), 512)
    dist.barrier()
    start = time.perf_counter()
    loradoctor.gate(model=model, tokenizer=tokenizer, dataset=data, dtypes="fp32", quiet=True,
                    every_rank=every_rank)
    seconds = time.perf_counter() - start
    print(f"GATE {dist.get_rank()} {seconds:.3f}", flush=True)
    dist.destroy_process_group()


def launch(nproc: int, every_rank: bool) -> float:
    """The slowest rank's gate seconds for one torchrun job."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "BENCH_WORKER": "every" if every_rank else "first"}
    out = subprocess.run([torchrun, "--standalone", "--nproc_per_node", str(nproc), __file__],
                         capture_output=True, text=True, env=env, check=True).stdout
    times = [float(t) for t in re.findall(r"^GATE \d+ (\S+)$", out, re.M)]
    assert len(times) == nproc, out
    return max(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    settings = {"1 process": (1, False), "2 processes": (2, False),
                "2 processes, every_rank=True": (2, True)}
    results = {name: [] for name in settings}
    for _ in range(args.repeat):  # interleaved, so a busy moment hits every setting alike
        for name, (nproc, every) in settings.items():
            results[name].append(launch(nproc, every))
    base = statistics.median(results["1 process"])
    for name, times in results.items():
        med = statistics.median(times)
        print(f"{name:32s} gate {med:6.2f} s (slowest rank, median of {len(times)}: "
              f"{', '.join(f'{t:.2f}' for t in times)})  x{med / base:.2f}")


if __name__ == "__main__":
    if os.environ.get("BENCH_WORKER"):
        worker(os.environ["BENCH_WORKER"] == "every")
    else:
        main()
