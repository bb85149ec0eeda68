"""Benchmark: what `check-dataset --fuzz N` costs over the user's own labelling code.

With the real Qwen3 tokenizer and the labelling that survives fuzzing (fixtures/fuzz/
correct.py: the template's own generation mask), measured side by side in one run:

  (a) the user's function alone on the N conversations the fuzz pass draws (the same
      strategy and seed, drawn beforehand): the floor, what their own test loop would cost;
  (b) the fuzz pass itself (`masking.fuzz_search.run`): hypothesis drawing each conversation, the
      user's function, the oracle's rendering and tokenization, the comparison;
  (c) `check-dataset chats.jsonl --dataset correct.py:generation_mask` through the engine,
      without and with `--fuzz N` (tokenizer loaded outside every timer);

and prints milliseconds per conversation and the ratios (best of `--repeat`).

    .venv/bin/python bench/bench_fuzz.py [--n 500] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from random import Random

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "fixtures" / "fuzz"))


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from hypothesis import HealthCheck, Phase, find, settings
    from hypothesis.errors import NoSuchExample
    from transformers import AutoTokenizer

    from correct import generation_mask
    from loradoctor import assets, engine, registry
    from loradoctor.inputs import pretrained
    from loradoctor.context import DatasetContext
    from loradoctor.masking.fuzz_search import no_local_constants, run
    from loradoctor.masking.oracle import Oracle
    from loradoctor.inputs.user_dataset import UserData
    from loradoctor.strategies import conversations

    tok_dir = assets.qwen3_tokenizer_dir()
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    oracle = Oracle(tokenizer)
    spec = f"{ROOT / 'fixtures' / 'fuzz' / 'correct.py'}:generation_mask"
    user = UserData(generation_mask, spec, tokenizer, None, None)

    drawn: list = []

    def collect(conversation) -> bool:
        drawn.append(conversation)
        return False
    with no_local_constants():
        try:
            find(conversations(template=tokenizer), collect, random=Random("0:0"),
                 settings=settings(max_examples=args.n, database=None, deadline=None,
                                   phases=[Phase.generate],
                                   suppress_health_check=list(HealthCheck)))
        except NoSuchExample:
            pass
    turns = sum(len(c) for c in drawn)
    chars = sum(len(m["content"]) for c in drawn for m in c)

    def alone():
        for c in drawn:
            generation_mask(tokenizer, c)

    def fuzz_pass():
        result = run(user, oracle, [], n=args.n, seed=0, shape="messages", suffix=".jsonl",
                     max_length=None, known=[])
        assert result.tried == args.n and not result.failures

    real = pretrained.load_tokenizer
    pretrained.load_tokenizer = lambda path: tokenizer  # loaded once, outside the timers
    data = ROOT / "fixtures" / "fuzz" / "chats.jsonl"

    def engine_run(n: int):
        def go():
            ctx = DatasetContext(data=data, tokenizer_dir=Path(tok_dir), dataset_spec=spec)
            ctx.fuzz, ctx.seed = n, 0
            ctx.validate_inputs()
            report = engine.run("check-dataset", registry.rules_for("dataset"), ctx)
            assert report.exit_code == 0
        return go

    a = best(alone, args.repeat)
    b = best(fuzz_pass, args.repeat)
    c0 = best(engine_run(0), args.repeat)
    c1 = best(engine_run(args.n), args.repeat)
    pretrained.load_tokenizer = real
    n = len(drawn)
    print(f"{n} generated conversations (seed 0): {turns} turns, {chars:,} characters; Qwen3 "
          f"tokenizer; best of {args.repeat}")
    print(f"(a) the user's function alone on them: {a:.2f} s, {a / n * 1000:.2f} ms/conv")
    print(f"(b) the fuzz pass (draw, feed, oracle, compare): {b:.2f} s, {b / n * 1000:.2f} "
          f"ms/conv = {b / a:.2f} x (a)")
    print(f"(c) check-dataset, 6 records, every rule: {c0 * 1000:.0f} ms without --fuzz, "
          f"{c1:.2f} s with --fuzz {args.n} (+{(c1 - c0) / n * 1000:.2f} ms/conv)")


if __name__ == "__main__":
    main()
