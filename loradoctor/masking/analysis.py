"""The one expensive pass every LD1xx masking rule reads, computed once per run (`ctx.memo`).

Without `--dataset`: the oracle's streaming scan of the data file (batched, `--workers`).
With `--dataset`: the same measurements plus the user's samples compared with the oracle.
The tokenizer the oracle renders with is taken before the user's code is constructed, so code
that changes the tokenizer (sets `pad_token`, adds tokens) changes only its own copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..render import progress
from .compare import Comparison, compare_dataset
from .markers import Marker, SourceHit, instance_markers, none_builders
from .oracle import Oracle
from .scan import DataStats, count_lines, scan
from .template import TemplateFacts
from .user_dataset import UserData


@dataclass
class Analysis:
    facts: TemplateFacts
    stats: DataStats
    comparison: Comparison | None = None
    user: UserData | None = None
    markers: list[Marker] = field(default_factory=list)
    source_hits: list[SourceHit] = field(default_factory=list)
    source: str = ""  # the data file as records name it (for locations)

    def location(self, line: int | None) -> str | None:
        return f"{self.source}:{line}" if line is not None else None


def oracle(ctx) -> Oracle:
    return ctx.memo("masking.oracle", lambda: Oracle(ctx.tokenizer))


def analysis(ctx) -> Analysis:
    def compute() -> Analysis:
        orc = oracle(ctx)
        source = str(Path(ctx.data))
        if not ctx.dataset_spec:
            with progress(ctx, "rendering and tokenizing",
                          lambda: count_lines(ctx.data)) as advance:
                stats = scan(orc, ctx.records(), ctx.max_length, ctx.workers, advance,
                             str(ctx.tokenizer_dir))
            result = Analysis(orc.facts, stats, source=source)
        else:
            user = UserData(ctx.user_dataset, ctx.dataset_spec, ctx.tokenizer, ctx.data,
                            ctx.max_length)
            markers = instance_markers(user.instance, orc.tokenizer)
            stats = DataStats()

            def total() -> int:
                return len(user) if user.kind == "class" else count_lines(ctx.data)
            with progress(ctx, f"comparing {user.name} with the chat template", total) as advance:
                comparison = compare_dataset(user, ctx.records(), orc, stats, markers,
                                             getattr(ctx, "show", 3), advance)
            hits = none_builders(user.obj, user.instance, user.tokenizer)
            result = Analysis(orc.facts, stats, comparison, user, markers, hits, source)
        ctx.summary.update(summary(result))
        return result
    return ctx.memo("masking.analysis", compute)


def summary(a: Analysis) -> dict:
    out = {"masking": a.stats.summary()}
    c = a.comparison
    if c is not None:
        out["masking"].update({
            "dataset": a.user.spec if a.user else None, "samples": c.samples,
            "samples_compared": c.compared, "samples_without_labels": c.no_supervised.count,
            "assistant_tokens_unsupervised": c.missing_tokens,
            "end_of_turn_unsupervised": c.eot_missing,
        })
    return out
