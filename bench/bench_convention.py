"""Benchmark: what measuring a model's loss convention costs, against the forwards check-model
runs anyway, measured side by side in one run.

    .venv/bin/python bench/bench_convention.py [--repeats 5]

For each model: `convention.detect(model, probe)` (the forward without labels, with labels,
with a marker in a third of the labels: 2 rows x 32 tokens, plus one more with labels for a
model that gives the last position only without them) against one forward of the probe
batch check-model runs on it (4 x 128 tokens, or the model's context when shorter), both
under `torch.no_grad()` on the CPU with `--threads` (default 1: a shared machine's
contention makes multi-threaded timings swing tenfold), timed alternately, medians of
`--repeats`. Models: the real
SmolLM2-135M-Instruct (transformers' Llama), the tiny seeded Qwen3 with the real 151,669-token
vocabulary, and the two user-model fixtures (MiniMind-style, nanoGPT-style).

Excluded from every timer: imports, loading or building the models, the first (warm-up) call.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _fixture(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "fixtures" / "models" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _medians(fns, repeats: int) -> list[float]:
    """Median seconds of each function, calls alternated so that load changes hit all alike."""
    for fn in fns:
        fn()  # warm-up
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, kept in zip(fns, times):
            start = time.perf_counter()
            fn()
            kept.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from loradoctor import assets
    from loradoctor.inputs.pretrained import load_model
    from loradoctor.model import convention
    from loradoctor.model.probe import max_length, vocab_size

    torch.set_num_threads(args.threads)
    models = {
        "SmolLM2-135M (real)": load_model(assets.smollm2_dir()),
        "tiny Qwen3 (151,669 vocab)": load_model(assets.tiny_qwen3_dir()),
        "MiniMind-style fixture": _fixture("minimind_style").tiny_minimind().eval(),
        "nanoGPT-style fixture": _fixture("nanogpt_style").tiny_gpt().eval(),
    }
    print(f"{'model':28} {'convention':58} {'detect':>9} {'probe fwd':>10} {'ratio':>6}")
    for name, model in models.items():
        length = min(128, max_length(model) or 128)
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab_size(model), (4, length), generator=gen)
        probe = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
        conv = convention.detect(model, probe)

        def forward():
            with torch.no_grad():
                convention.logits(model, probe, conv)
        detect_s, forward_s = _medians([lambda: convention.detect(model, probe), forward],
                                       args.repeats)
        print(f"{name:28} {conv.describe()[:58]:58} {detect_s * 1000:7.1f}ms "
              f"{forward_s * 1000:8.1f}ms {detect_s / forward_s:5.2f}x")


if __name__ == "__main__":
    main()
