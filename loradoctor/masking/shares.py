"""Measuring records in contiguous shares, and merging the shares as one pass would have.

`--workers N` with `--dataset` code and `--shard I/N` both measure the records in shares:
chunks handed to worker processes, or the one shard a run checks. A share's measurements
(`Share`: the user's samples against the oracle, a `Comparison`, and the oracle's own
`DataStats`) merge with the next share's, in file order, into exactly what one pass over both
would have measured: counts add, line lists keep their first `MAX_LINES`, a first-seen text
keeps the first one, capped lists stay capped where one pass would have stopped.

Token views need care. One pass shows a sample at most once (under the first rule that asks)
and keeps the first `show` views per rule. A share cannot know which of its views the shares
before it leave room for, so it logs, in order, every view a rule asks for, up to
`show * MAX_VIEW_KEYS` distinct samples per rule (`ViewLog`). That is enough: a rule's
candidates can only be taken away by samples another rule showed, at most `show` per rule,
so the first `show * MAX_VIEW_KEYS` hold every view the rule can still keep. `ViewLog.replay`
then makes the one pass's choice over the merged log. A share logs views as token ids; only
the views kept are decoded.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields

from ..findings import TokenView
from .compare import MAX_ROW_PROBLEMS, MAX_VARIANT_ROWS, Comparer, Comparison
from .sample_diff import decode
from .scan import DataStats, Lines

MAX_VIEW_KEYS = 16  # rules that ask for token views (LD101, LD103-LD108 today), bounded above
SAME = ("n_items", "user_max_length")  # the same in every share: the code's length, its limit
CAPPED = {"row_problems": MAX_ROW_PROBLEMS, "locations": MAX_ROW_PROBLEMS}
VARIANT = ("variant_checked", "variant_rows", "first_variant")  # capped at MAX_VARIANT_ROWS


class ViewLog:
    """The token views rules asked for, in order, enough of them to replay one pass's choice."""

    def __init__(self, show: int):
        self.show = show
        self.cap = max(0, show) * MAX_VIEW_KEYS
        self.keys: dict[str, None] = {}  # every rule that asked, in the order it first did
        self.events: list[tuple[str, int, TokenView]] = []
        self._lines: dict[str, set[int]] = {}

    def wants(self, key: str, line: int) -> bool:
        self.keys.setdefault(key)
        lines = self._lines.setdefault(key, set())
        return line not in lines and len(lines) < self.cap

    def add(self, key: str, line: int, view: TokenView) -> None:
        self._lines.setdefault(key, set()).add(line)
        self.events.append((key, line, view))

    def extend(self, other: "ViewLog") -> None:
        """Append the next share's log (file order)."""
        for key in other.keys:
            self.keys.setdefault(key)
        for key, line, view in other.events:
            if self.wants(key, line):
                self.add(key, line, view)

    def trim(self) -> "ViewLog":
        """Drop the views no pass can keep, now that the share is complete: a rule's samples
        can only be taken by those the other rules here show, at most `show` each, so its first
        `show + sum(min(show, others' samples))` samples are enough."""
        counts = {key: len(lines) for key, lines in self._lines.items()}
        taken = sum(min(self.show, n) for n in counts.values())
        room = {key: self.show + taken - min(self.show, n) for key, n in counts.items()}
        kept, lines = [], {key: set() for key in counts}
        for key, line, view in self.events:
            if line in lines[key] or len(lines[key]) < room[key]:
                lines[key].add(line)
                kept.append((key, line, view))
        self.events, self._lines = kept, lines
        return self

    def dump(self, decode=None) -> dict:
        """The log as plain values (views decoded), for a partial report."""
        return {"show": self.show, "keys": list(self.keys),
                "events": [(key, line, decode(view) if decode is not None else view)
                           for key, line, view in self.events]}

    @classmethod
    def load(cls, dumped: dict) -> "ViewLog":
        log = cls(dumped["show"])
        for key in dumped["keys"]:
            log.keys.setdefault(key)
        for key, line, view in dumped["events"]:
            log.add(key, line, view)
        return log

    def replay(self, decode=None) -> dict[str, list[TokenView]]:
        """The views one pass keeps: the first `show` per rule, each sample at most once."""
        views: dict[str, list[TokenView]] = {key: [] for key in self.keys}
        shown: set[int] = set()
        for key, line, view in self.events:
            kept = views[key]
            if len(kept) >= self.show or line in shown:
                continue
            shown.add(line)
            kept.append(decode(view) if decode is not None else view)
        return views


def _ids(ids: list[int]) -> int:
    return ids[0]


def view_decoder(tokenizer):
    """Turns a logged view's token ids into the text `Comparer` shows for each token."""

    def decoded(view: TokenView) -> TokenView:
        if not view.tokens or isinstance(view.tokens[0], str):
            return view
        return TokenView(view.title, [decode(tokenizer, [i]) for i in view.tokens],
                         view.user, view.oracle)
    return decoded


class RecordingComparer(Comparer):
    """A `Comparer` that logs its token views (as ids) instead of choosing them, and notes the
    rows it checked against the template's variants, so that shares can be merged exactly."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.log = ViewLog(self.show)
        self.variant_lines: list[int] = []

    def add(self, line, location, item, sample=None) -> None:
        before = self.result.variant_checked
        super().add(line, location, item, sample)
        if self.result.variant_checked > before:
            self.variant_lines.append(line)

    def _view(self, key: str, diff) -> None:
        self.result.views.setdefault(key, [])  # as one pass does, even for a view not kept
        if not self.log.wants(key, diff.line):
            return
        # The parent class builds the view; with an empty shown set and view list it always
        # does, and with `_decode` giving back the id its tokens stay ids until kept.
        kept, shown = self.result.views, self._shown
        self.result.views, self._shown, self._decode = {}, set(), _ids
        try:
            super()._view(key, diff)
            made = self.result.views.get(key)
        finally:
            del self._decode
            self.result.views, self._shown = kept, shown
        if made:
            self.log.add(key, diff.line, made[0])


@dataclass
class Share:
    """The measurements of one contiguous share of the records."""

    comparison: Comparison | None
    stats: DataStats = field(default_factory=DataStats)
    log: ViewLog | None = None
    variant_lines: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, comparer: RecordingComparer, stats: DataStats | None = None) -> "Share":
        return cls(comparer.result, stats or DataStats(), comparer.log.trim(),
                   list(comparer.variant_lines))

    def merge(self, other: "Share") -> None:
        """Add the next share (file order)."""
        self.stats.merge(other.stats)
        if other.comparison is None:
            return
        if self.comparison is None:
            self.comparison, self.log = other.comparison, other.log
            self.variant_lines = list(other.variant_lines)
            return
        self.variant_lines = merge_comparison(self.comparison, other.comparison,
                                              self.variant_lines, other.variant_lines)
        self.log.extend(other.log)

    def finish(self, decode=None) -> None:
        """Choose the token views one pass would have shown."""
        if self.comparison is not None and self.log is not None:
            self.comparison.views = self.log.replay(decode)


def merge_comparison(acc: Comparison, other: Comparison, acc_variant: list[int],
                     other_variant: list[int]) -> list[int]:
    """Fold `other` (the next share) into `acc`; returns the merged rows checked for variants.

    Every field is merged by what it holds; a field of a kind this does not know raises, so a
    new measurement gets a merge rule before sharded runs can disagree with whole ones.
    """
    for f in fields(Comparison):
        name = f.name
        if name == "views" or name in VARIANT:
            continue  # replayed from the view logs; merged below
        a, b = getattr(acc, name), getattr(other, name)
        if name in SAME:
            setattr(acc, name, a if a is not None else b)
        elif name in CAPPED:
            room = CAPPED[name] - len(a)
            if isinstance(a, dict):
                for k, v in list(b.items())[:max(0, room)]:
                    a.setdefault(k, v)
            else:
                a.extend(b[:max(0, room)])
        elif isinstance(a, bool) or isinstance(b, bool):
            raise TypeError(f"Comparison.{name}: no merge rule for a flag")
        elif isinstance(a, int) and isinstance(b, int):
            setattr(acc, name, a + b)
        elif isinstance(a, Lines):
            a.merge(b)
        elif isinstance(a, Counter):
            a.update(b)
        elif isinstance(a, dict):
            for k, v in b.items():
                if isinstance(v, Lines):
                    a.setdefault(k, Lines()).merge(v)
                elif isinstance(v, list) and all(isinstance(x, int) for x in v):
                    mine = a.setdefault(k, [0] * len(v))
                    a[k] = [x + y for x, y in zip(mine, v)]
                else:
                    raise TypeError(f"Comparison.{name}[{k!r}]: no merge rule for "
                                    f"{type(v).__name__}")
        elif (a is None or isinstance(a, str)) and (b is None or isinstance(b, str)):
            setattr(acc, name, a if a is not None else b)  # the first one seen
        else:
            raise TypeError(f"Comparison.{name}: no merge rule for {type(a).__name__}")
    # One pass checks the first MAX_VARIANT_ROWS rows against the template's variants: the
    # next share's checks count only up to that, and its variant rows only among those.
    room = max(0, MAX_VARIANT_ROWS - acc.variant_checked)
    taken = other_variant[:room]
    last = taken[-1] if taken else None
    for line in other.variant_rows.lines:
        if last is not None and line <= last:
            acc.variant_rows.add(line)
    if acc.first_variant is None and other.variant_rows.lines and last is not None \
            and other.variant_rows.lines[0] <= last:
        acc.first_variant = other.first_variant
    acc.variant_checked += len(taken)
    return acc_variant + taken
