"""Static mode at full size: check-model on a Qwen3-8B-shaped and a Llama-70B-shaped model
directory that hold only config.json, built on the meta device (`model/static.py`).

Each run is the real CLI in its own process (`check-model --model DIR --apply
fixtures/pipelines/minimind_lora.py:NAME --json`), so its wall time and its peak resident
memory (`os.wait4`'s ru_maxrss of that child alone) are the whole run's: Python, torch and
transformers imported, the model built from its config, MiniMind's apply code run on every
linear layer, the rules read. Both the closure bug (`apply_lora`: LD201 must be an error) and
a fix (`apply_lora_factory`: clean) run on each shape. Budget: under a minute and under 2 GB.

    .venv/bin/python bench/bench_static.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MINIMIND = ROOT / "fixtures" / "pipelines" / "minimind_lora.py"
SHAPES = {
    "Qwen3-8B": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
                 "hidden_size": 4096, "num_hidden_layers": 36, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "intermediate_size": 12288, "vocab_size": 151936,
                 "head_dim": 128, "max_position_embeddings": 40960, "torch_dtype": "bfloat16",
                 "tie_word_embeddings": False, "rope_theta": 1000000},
    "Llama-70B": {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                  "hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64,
                  "num_key_value_heads": 8, "intermediate_size": 28672, "vocab_size": 128256,
                  "max_position_embeddings": 131072, "torch_dtype": "bfloat16",
                  "tie_word_embeddings": False, "rope_theta": 500000.0},
}
BUDGET_S, BUDGET_BYTES = 60.0, 2 * 2**30


def run(model_dir: Path, apply: str) -> dict:
    cmd = [sys.executable, "-m", "loradoctor", "check-model", "--model", str(model_dir),
           "--apply", f"{MINIMIND}:{apply}", "--apply-arg", "rank=8", "--apply-arg", "alpha=16",
           "--json"]
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        data = json.loads(out.read())
    ld201 = [f for f in data["findings"] if f["code"] == "LD201" and f["severity"] == "error"]
    summary = data["summary"]
    total = summary["trainable_parameters"] / summary["trainable_percent"] * 100
    return {"exit": proc.returncode, "wall_s": wall, "peak_rss": usage.ru_maxrss * 1024,
            "ld201_errors": len(ld201), "adapters": summary["adapters"], "parameters": total,
            "skipped": sum(c["status"] == "skip" for c in data["checks"])}


def main() -> int:
    print(f"static check-model, one process per run (budget {BUDGET_S:.0f} s, "
          f"{BUDGET_BYTES / 2**30:.0f} GB)")
    print(f"{'shape':10} {'apply':18} {'params':>8} {'adapters':>8} {'exit':>4} {'LD201':>6} "
          f"{'wall s':>7} {'peak RSS':>9}")
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-static-") as tmp:
        for name, config in SHAPES.items():
            d = Path(tmp) / name
            d.mkdir()
            (d / "config.json").write_text(json.dumps(config), encoding="utf-8")
            for apply in ("apply_lora", "apply_lora_factory"):
                r = run(d, apply)
                ok &= r["wall_s"] < BUDGET_S and r["peak_rss"] < BUDGET_BYTES
                ok &= (r["exit"], r["ld201_errors"] > 0) == ((1, True) if apply == "apply_lora"
                                                             else (0, False))
                print(f"{name:10} {apply:18} {r['parameters'] / 1e9:7.2f}B {r['adapters']:8d} "
                      f"{r['exit']:4d} {r['ld201_errors']:6d} {r['wall_s']:7.1f} "
                      f"{r['peak_rss'] / 2**20:7.0f} MB")
    print("within budget, bug found and fix clean" if ok else "OVER BUDGET OR WRONG VERDICT")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
