"""The one expensive pass every LD1xx masking rule reads, computed once per run (`ctx.memo`).

Without `--dataset`: the oracle's streaming scan of the data file (batched, `--workers`).
With `--dataset`: the same measurements plus the user's samples compared with the oracle; a
sample whose ids are not its record's rendering is judged against its own tokens' turns
(`structure.py`). Without conversations (`--tokenized` rows, a trainer's batches, a dataset
instance alone) every row is judged against its own tokens.

The oracle learns the template's facts and special tokens before the user's code is
constructed, and encodes with padding and truncation switched off for the call; the user's
code shares the tokenizer object, so a token it adds is visible to both (the API puts the
tokenizer's settings back after the run).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..findings import Finding
from ..inputs.sources import locate
from ..progress import progress
from ..rules import Rule, SkipCheck
from .compare import Comparison, compare_dataset, compare_labels, compare_rows
from .markers import Marker, SourceHit, instance_markers, none_builders
from .oracle import Oracle
from .scan import DataStats, Lines, scan
from .structure import StructureOracle
from .template import TemplateFacts
from ..inputs.user_dataset import UserData


@dataclass
class Analysis:
    facts: TemplateFacts | None  # None: labels read without a tokenizer (`labels_only`)
    stats: DataStats
    comparison: Comparison | None = None
    user: UserData | None = None
    markers: list[Marker] = field(default_factory=list)
    source_hits: list[SourceHit] = field(default_factory=list)
    source: str = ""  # the data file as records name it (for locations)
    layout: list = field(default_factory=list)  # files and their rows (`inputs.sources.locate`)

    def location(self, line: int | None) -> str | None:
        if line is None:
            return None
        named = self.comparison.locations.get(line) if self.comparison is not None else None
        return named or locate(self.source, self.layout, line)

    def finding(self, rule_: Rule, lines: Lines, message: str, *, fix: str | None = None,
                severity=None, **evidence) -> Finding:
        """A finding of `rule_` at the first of `lines`; their count and line numbers lead its
        evidence, then `evidence`."""
        return rule_.finding(message, location=self.location(lines.lines[0]),
                             evidence={"count": lines.count, "lines": lines.lines, **evidence},
                             fix=fix, severity=severity)

    def needs_comparison(self) -> Comparison:
        """The user's samples compared with the oracle; a rule that needs them skips without."""
        if self.comparison is None:
            raise SkipCheck("needs --dataset (your dataset class or labelling function)")
        return self.comparison

    def views_for(self, code: str) -> list:
        """The token views the comparison kept for rule `code` (none without --dataset)."""
        return list(self.comparison.views.get(code, [])) if self.comparison is not None else []


def oracle(ctx) -> Oracle:
    return ctx.memo("masking.oracle", lambda: Oracle(ctx.tokenizer))


def structure(ctx) -> StructureOracle:
    return ctx.memo("masking.structure", lambda: StructureOracle(oracle(ctx)))


def analysis(ctx) -> Analysis:
    def compute() -> Analysis:
        if getattr(ctx, "labels_only", False):  # no tokenizer: what the labels alone show
            with progress(ctx, "reading the labels", ctx.count) as advance:
                comparison = compare_labels(ctx.rows(), getattr(ctx, "show", 3), advance)
            result = Analysis(None, DataStats(), comparison, source=ctx.source)
            ctx.summary.update(summary(result))
            return result
        orc = oracle(ctx)
        source = ctx.source
        show = getattr(ctx, "show", 3)
        user = ctx.user_data()
        if not ctx.has_conversations:
            # Token rows alone (--tokenized, a trainer's batches, a dataset instance): the truth
            # comes from each row's own tokens.
            markers = instance_markers(user.instance, orc.tokenizer) if user else []
            with progress(ctx, "splitting token rows into turns", ctx.count) as advance:
                if getattr(ctx, "shard", None) is not None:  # views logged for `merge`
                    from .workers import rows_for
                    comparison = rows_for(ctx, structure(ctx), show, advance, user, markers)
                else:
                    comparison = compare_rows(ctx.rows(), structure(ctx), show, advance, user,
                                              markers)
            hits = none_builders(user.obj, user.instance, user.tokenizer) if user else []
            result = Analysis(orc.facts, DataStats(), comparison, user, markers, hits, source,
                              getattr(ctx, "layout", []))
        elif user is None:
            with progress(ctx, "rendering and tokenizing", ctx.count) as advance:
                stats = scan(orc, ctx.records(), ctx.max_length, ctx.workers, advance,
                             ctx.tokenizer_path)
            result = Analysis(orc.facts, stats, source=source, layout=getattr(ctx, "layout", []))
        else:
            markers = instance_markers(user.instance, orc.tokenizer)
            stats = DataStats()

            def total() -> int:
                sharded = getattr(ctx, "shard", None) is not None
                return len(user) if user.kind == "class" and not sharded else ctx.count()
            with progress(ctx, f"comparing {user.name} with the chat template", total) as advance:
                if ctx.workers > 1 or getattr(ctx, "shard", None) is not None:
                    # In shares: chunks for worker processes, or this run's shard.
                    from .workers import compare_for
                    comparison, stats = compare_for(ctx, user, orc, markers, show, advance,
                                                    structure(ctx))
                else:
                    comparison = compare_dataset(user, ctx.records(), orc, stats, markers, show,
                                                 advance, structure(ctx))
            hits = none_builders(user.obj, user.instance, user.tokenizer)
            result = Analysis(orc.facts, stats, comparison, user, markers, hits, source,
                              getattr(ctx, "layout", []))
        ctx.summary.update(summary(result))
        return result
    return ctx.memo("masking.analysis", compute)


def summary(a: Analysis) -> dict:
    out = {"masking": a.stats.summary()}
    c = a.comparison
    if c is not None:
        out["masking"].update({
            "dataset": a.user.spec if a.user else None, "samples": c.samples,
            "samples_compared": c.compared, "samples_by_own_tokens": c.by_tokens,
            "samples_without_labels": c.no_supervised.count,
            "assistant_tokens_unsupervised": c.missing_tokens,
            "end_of_turn_unsupervised": c.eot_missing,
        })
    return out
