"""Measured counts in words: `3 of 10 samples ...: lines 3, 7, 9-12 and 40 more`.

Every masking rule (LD101-LD117) states what it counted the same way: how many of how many
samples (or conversations, rows), what is wrong with them, then where, as the data file's line
numbers with runs compressed and the rest counted. `counted()` builds that sentence; its parts
(`plural`, `line_list`, `agree`, `tally`) serve the sentences of another shape.
"""

from __future__ import annotations

from typing import Mapping

from .scan import Lines
from .template import TemplateFacts

LINES_IN_MESSAGE = 6  # runs of line numbers spelled out in a message; evidence holds up to 1000


def plural(count: int, noun: str) -> str:
    """`1 sample`, `3 samples`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def agree(count: int, one: str, many: str) -> str:
    """The verb form for `count` things: `agree(1, "loses", "lose")` is `loses`."""
    return one if count == 1 else many


def line_list(lines: Lines) -> str:
    """`lines 3, 7, 9-12 and 40 more`: ranges compressed, the rest counted."""
    shown, runs = lines.lines[:LINES_IN_MESSAGE * 4], []
    for n in shown:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:LINES_IN_MESSAGE]]
    listed = sum(b - a + 1 for a, b in runs[:LINES_IN_MESSAGE])
    more = lines.count - listed
    word = "line" if listed == 1 else "lines"
    return f"{word} {', '.join(parts)}" + (f" and {more} more" if more > 0 else "")


def counted(lines: Lines, noun: str, after: str, *, of: int | None = None, before: str = "",
            then: str = ": ") -> str:
    """`{before}3 of 10 samples{after}{then}lines 3, 7, 9-12 and 40 more`.

    The count is `lines.count`, out of `of` when given (`3 of 10 samples`), else alone
    (`3 samples`); `after` holds its own leading space or punctuation, so the sentence reads
    exactly as written around the count."""
    head = f"{lines.count} of {plural(of, noun)}" if of is not None else plural(lines.count, noun)
    return f"{before}{head}{after}{then}{line_list(lines)}"


def turns_missed(whole: int, partly: int, tails: int) -> str:
    """`2 whole turn(s); 3 turn(s) partly, 1 sample(s) lose a tail`: how assistant turns went
    unsupervised (the parts that are zero left out)."""
    parts = [f"{whole} whole turn(s)"] if whole else []
    if partly:
        parts.append(f"{partly} turn(s) partly" + (f", {tails} sample(s) lose a tail" if tails
                                                     else ""))
    return "; ".join(parts)


def tally(counts: Mapping[str, int]) -> str:
    """`5 user, 2 template`: each kind with its count, the most first."""
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def quote(text: str, limit: int = 60) -> str:
    """`text` quoted (its repr), cut after `limit` characters with `...`."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def rewrite_kind(facts: TemplateFacts) -> str:
    """How the template rewrites the replies it does not render verbatim (LD114)."""
    if not facts.drops_reasoning:
        return "reformats them (trims or moves text)"
    which = "every assistant turn, the last one too" if facts.drops_final_reasoning \
        else "earlier assistant turns"
    return f"drops <think> reasoning from {which}"


def think_block_left_out(samples: int, block: str) -> str:
    """What LD104 adds when labels leave out the empty think block the template writes into a
    turn on its own: a choice, not a miss."""
    return (f"; the empty think block the template writes on its own ({block!r}) is left "
            f"unsupervised in {plural(samples, 'sample')}, which is right too: at inference "
            f"the generation prompt or the model writes it")
