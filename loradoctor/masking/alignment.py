"""One sample of the user's lined up with the template's truth, before labels are compared.

Three steps of the comparison (`compare.Comparer`) that need nothing but the two token lists:
the user's labels read with a hand-made shift by one undone (`effective_labels`), the user's
ids aligned with the template's (`align`: a doubled or added BOS, left padding or a missing
preamble allowed for, the longest common run wins), and what the template says each of its
tokens is (`TokenKinds`: system, user or tool text, template text, the separator).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from ..inputs.user_dataset import IGNORE_INDEX, Item
from .oracle import OracleSample
from .template import TemplateFacts
from .wording import quote


def effective_labels(item: Item) -> tuple[list[int], list[bool], bool] | None:
    """(ids, supervised mask in input positions, shifted): undo a hand-made shift by one."""
    ids, labels = item.ids, item.labels
    if len(labels) not in (len(ids), len(ids) - 1) or not ids:
        return None
    sup = [t for t, y in enumerate(labels) if y != IGNORE_INDEX]
    same = sum(1 for t in sup if labels[t] == ids[t])
    nxt = sum(1 for t in sup if t + 1 < len(ids) and labels[t] == ids[t + 1])
    if len(labels) == len(ids) - 1:
        shifted = bool(sup) and nxt >= same  # labels = input_ids[1:], MiniMind's (X, Y)
    else:
        shifted = bool(sup) and nxt > same and nxt >= 0.5 * len(sup)
    if not shifted:
        mask = [y != IGNORE_INDEX for y in labels] + [False] * (len(ids) - len(labels))
        return list(ids), mask, False
    mask = [False] * (len(ids) + 1)
    for t in sup:
        mask[t + 1] = True
    ids = list(ids)
    if mask[len(ids)]:
        ids.append(labels[len(ids) - 1])  # the last label predicts a token past the input
    else:
        mask.pop()
    return ids, mask, True


def labels_aligned(item: Item) -> bool:
    """Most supervised labels equal the input id at their own position (`labels[t] ==
    input_ids[t]`): right for a model that shifts inside, a copy task for one that does not."""
    sup = [t for t, y in enumerate(item.labels) if y != IGNORE_INDEX and t < len(item.ids)]
    same = sum(1 for t in sup if item.labels[t] == item.ids[t])
    return bool(sup) and same >= 0.5 * len(sup)


@dataclass
class Alignment:
    """User position `user + j` is the template's position `oracle + j`, for j < n."""

    n: int
    user: int  # where the common run starts in the user's ids
    oracle: int  # and in the template's
    note: str | None  # how the starts differ, when that is a difference worth saying
    double_bos: bool = False  # the user's ids start with BOS twice, the template's once


def align(user_ids: list[int], sample: OracleSample, facts: TemplateFacts, pad: int | None,
          bos: int | None) -> Alignment:
    """The longest common run of the user's ids and the template's, over the starts a doubled
    or added BOS, left padding or a missing preamble would explain."""
    U, O = user_ids, sample.ids
    candidates = [(0, 0, None)]
    if bos is not None and U[:2] == [bos, bos] and O[:1] == [bos]:
        candidates.append((1, 0, "double_bos"))
    if bos is not None and U[:1] == [bos] and O[:1] != [bos]:
        candidates.append((1, 0, "the tokenizer added a BOS token the template does not "
                                 "write"))
    lead = 0
    while pad is not None and lead < len(U) and U[lead] == pad and \
            (lead >= len(O) or O[lead] != pad):
        lead += 1
    if lead:
        candidates.append((lead, 0, None))  # left padding
    if facts.preamble and sample.truth.text.startswith(facts.preamble):
        k = bisect_left([a for a, _ in sample.offsets], len(facts.preamble))
        if k:
            candidates.append((0, k, "the template's preamble is missing: "
                                     f"{quote(facts.preamble)}"))
    best = None
    for us, os_, note in candidates:
        n = common_prefix(U, us, O, os_)
        if best is None or n > best[0]:
            best = (n, us, os_, note)
    n, us, os_, note = best
    if note == "double_bos":
        return Alignment(n, us, os_, None, double_bos=True)
    return Alignment(n, us, os_, note)


def common_prefix(a: list[int], i: int, b: list[int], j: int) -> int:
    """How many tokens `a[i:]` and `b[j:]` have in common from their starts."""
    n = 0
    limit = min(len(a) - i, len(b) - j)
    while n < limit and a[i + n] == b[j + n]:
        n += 1
    return n


class TokenKinds:
    """What the oracle says a token is, by where its first character sits in the text."""

    def __init__(self, sample: OracleSample, facts: TemplateFacts):
        self.sample = sample
        regions = sorted(sample.truth.regions)
        self.starts = [s for s, _, _ in regions]
        self.regions = regions
        sep = facts.separator
        text = sample.truth.text
        self.seps = sorted((t.end, t.end + len(sep)) for t in sample.truth.turns
                           if sep and text.startswith(sep, t.end))

    def of(self, o: int) -> str:
        a = self.sample.offsets[o][0]
        i = bisect_right(self.starts, a) - 1
        if i >= 0 and self.regions[i][0] <= a < self.regions[i][1]:
            return self.regions[i][2]
        for s, e in self.seps:
            if s <= a < e:
                return "separator"
        return "template"
