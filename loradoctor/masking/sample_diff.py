"""One sample's labels judged against the template's truth, position by position.

`SampleJudge.judge` lines the sample's ids up with the template's (`alignment.align`), says
how they differ when they do not (LD110), and where they do, counts in a `SampleDiff` each
label that disagrees with the truth, classified by what the oracle says the token is: prompt
text (system, user, tool), template text (role headers, preamble), the separator after the
end-of-turn token, padding, an assistant body token or the end-of-turn token. The comparison
(`compare.Comparer`) adds the diffs of every sample up.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .alignment import Alignment, TokenKinds, align
from .oracle import OracleSample
from .template import TemplateFacts
from .wording import quote


def decode(tokenizer, ids: list[int]) -> str:
    """The text of `ids` exactly as the tokens hold it (special tokens and spaces kept)."""
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@dataclass
class SampleDiff:
    """How one sample's labels differ from the oracle's."""

    line: int
    location: str
    n_user: int = 0
    n_supervised: int = 0
    shifted: bool = False
    labels_aligned: bool = False  # most supervised labels are the input id at their position
    double_bos: bool = False
    aligned: bool = False
    truncated: bool = False
    differ: str | None = None  # how the input_ids differ from the template's (LD110)
    extra: Counter = field(default_factory=Counter)  # category -> supervised, should not be
    missing_turns: int = 0  # assistant turns with no body token supervised
    partial_turns: int = 0  # assistant turns with some body tokens unsupervised
    missing_tokens: int = 0
    tail: bool = False  # the unsupervised body tokens are a turn's tail
    eot_total: int = 0
    eot_missing: int = 0
    eot_as_pad: bool = False  # the missed end-of-turn token has the pad id
    assistant_total: int = 0  # oracle-supervised tokens (body + end-of-turn)
    cut: int = 0  # oracle-supervised tokens cut away by the user's truncation
    straddle_missing: int = 0  # missing turns whose header merges with the reply's first token
    marker_miss: dict[str, tuple[int, int]] = field(default_factory=dict)  # marker -> counts
    focus: int | None = None  # user position of the first disagreement
    inserted_total: int = 0  # tokens of the template's own empty think block (either way right)
    inserted_supervised: int = 0  # of those, the ones the labels supervise
    cut_in_turn: bool = False  # judged by its own tokens, the row ends inside an assistant turn


class SampleJudge:
    """Judges one sample at a time against the truth (one per comparison)."""

    def __init__(self, facts: TemplateFacts, tokenizer, pad_id: int | None, bos_id: int | None):
        self.facts = facts
        self.tokenizer = tokenizer
        self.pad_id = pad_id
        self.bos_id = bos_id

    def judge(self, diff: SampleDiff, ids: list[int], mask: list[bool],
              attention: list[int] | None, sample: OracleSample) -> list[bool] | None:
        """Align the sample's ids with `sample`'s and, where they align, count in `diff` every
        label that differs from the truth (prompt or template tokens supervised, assistant and
        end-of-turn tokens left out, tokens cut away) and return the truth's mask over the
        sample's positions; None where the ids do not align."""
        real = self._unpadded(diff, mask, attention)
        U, M = [ids[t] for t in real], [mask[t] for t in real]
        al = align(U, sample, self.facts, self.pad_id, self.bos_id)
        self._judge_alignment(diff, U, M, sample, al)
        if not diff.aligned:
            end = al.user + al.n
            diff.focus = real[end] if end < len(real) else None
            return None
        truth = sample.mask()
        optional = {o for a, b in sample.optional for o in range(a, b)}
        first = self._count_supervised_outside(diff, M, truth, sample, al, optional)
        for k in range(len(sample.ranges)):
            self._judge_turn(diff, k, M, sample, al, optional)
        diff.focus = real[al.user + first] if first is not None else None
        oracle_mask = [False] * len(ids)
        for j in range(al.n):
            oracle_mask[real[al.user + j]] = truth[al.oracle + j]
        return oracle_mask

    def _unpadded(self, diff: SampleDiff, mask: list[bool],
                  attention: list[int] | None) -> list[int]:
        """The positions the attention mask keeps; a label on the others is padding
        supervised."""
        real = list(range(len(mask)))
        if attention is not None and 0 in attention:
            real = [t for t in real if t >= len(attention) or attention[t]]
        kept = set(real)
        padding = [t for t in range(len(mask)) if t not in kept] if len(real) < len(mask) else []
        if any(mask[t] for t in padding):
            diff.extra["padding"] += sum(mask[t] for t in padding)
        return real

    def _judge_alignment(self, diff: SampleDiff, U: list[int], M: list[bool],
                         sample: OracleSample, al: Alignment) -> None:
        """Whether the ids are the template's (whole, or cut short, padding allowed for after
        them), what they differ in if not, and labels on tokens before the common run."""
        O, pad, us, n = sample.ids, self.pad_id, al.user, al.n
        note = al.note
        rest_u, rest_o = U[us + n:], O[al.oracle + n:]
        if al.double_bos:
            diff.double_bos = True
        if any(M[:us]):  # a doubled or added BOS, left padding: supervised, should not be
            diff.extra["template"] += sum(M[:us])
        tail_pads = bool(rest_u) and pad is not None and all(t == pad for t in rest_u)
        if not rest_o:
            diff.aligned = True
            if rest_u and not tail_pads:
                note = note or (f"{len(rest_u)} token(s) after the template's text: "
                                f"{quote(self.decode(rest_u))}")
        elif not rest_u or tail_pads:
            diff.aligned = diff.truncated = True
        else:
            note = note or self._describe_difference(U[us:], O[al.oracle:], n, sample, al.oracle)
        if rest_u and tail_pads and any(M[us + n:]):
            diff.extra["padding"] += sum(M[us + n:])
        diff.differ = note

    def _count_supervised_outside(self, diff: SampleDiff, M: list[bool], truth: list[bool],
                                  sample: OracleSample, al: Alignment,
                                  optional: set[int]) -> int | None:
        """Count the supervised tokens the template does not supervise, by what they are;
        return the first aligned position where the labels and the truth part (the
        template's own think block, `optional`, may go either way)."""
        kinds = TokenKinds(sample, self.facts)
        first = None
        for j in range(al.n):
            u_sup, o_sup = M[al.user + j], truth[al.oracle + j]
            if u_sup and not o_sup:
                diff.extra[kinds.of(al.oracle + j)] += 1
            if u_sup != o_sup and first is None and al.oracle + j not in optional:
                first = j
        if diff.extra and first is None:
            first = 0
        return first

    def _judge_turn(self, diff: SampleDiff, k: int, M: list[bool], sample: OracleSample,
                    al: Alignment, optional: set[int]) -> None:
        """Assistant turn k: its body and end-of-turn tokens the labels leave out (whole, in
        part, a tail) or truncation cut away. The template's own think block (`optional`)
        is counted apart: left out, it is not an assistant token missed."""
        t0, t1 = sample.ranges[k]
        us, os_, n, pad = al.user, al.oracle, al.n, self.pad_id
        eot = t1 - 1 if sample.eot_ok[k] else None
        body = range(t0, eot if eot is not None else t1)
        diff.assistant_total += t1 - t0
        missed = seen = 0
        trailing_missed = 0
        for o in body:
            if o < os_:
                continue
            if o >= os_ + n:
                diff.cut += 1
                continue
            if o in optional:
                diff.inserted_total += 1
                if M[us + o - os_]:
                    diff.inserted_supervised += 1
                else:
                    diff.assistant_total -= 1
                continue
            seen += 1
            if M[us + o - os_]:
                trailing_missed = 0
            else:
                missed += 1
                trailing_missed += 1
        whole = seen and missed == seen
        if eot is not None:
            if eot >= os_ + n:
                diff.cut += 1
            elif eot >= os_ and not M[us + eot - os_]:
                if whole:  # a turn missed whole is LD104's, end-of-turn token included
                    missed += 1
                else:
                    diff.eot_total += 1
                    diff.eot_missing += 1
                    diff.eot_as_pad = diff.eot_as_pad or (pad is not None
                                                          and sample.ids[eot] == pad)
            elif eot >= os_:
                diff.eot_total += 1
        if whole:
            diff.missing_turns += 1
            diff.straddle_missing += k in sample.straddles
        elif missed:
            diff.partial_turns += 1
            diff.tail = diff.tail or trailing_missed == missed
        diff.missing_tokens += missed

    def _describe_difference(self, U: list[int], O: list[int], n: int, sample: OracleSample,
                             os_: int) -> str:
        """How the ids differ from the template's where the common run `n` ends (LD110)."""
        user_text = self.decode(U)
        if user_text == self.decode(O):
            return (f"the same text tokenized differently (first difference at token {n}: the "
                    f"template's ids give {quote(self.decode(O[n:n + 3]))}, yours "
                    f"{quote(self.decode(U[n:n + 3]))}); tokenize the rendered conversation "
                    f"in one call with add_special_tokens=False")
        if self.facts.preamble and sample.truth.text.endswith(user_text) \
                and sample.truth.text.startswith(self.facts.preamble):
            return f"the template's preamble is missing: {quote(self.facts.preamble)}"
        return (f"first difference at token {n}: the template has "
                f"{quote(self.decode(O[n:n + 4]))}, yours has {quote(self.decode(U[n:n + 4]))}")

    def decode(self, ids: list[int]) -> str:
        return decode(self.tokenizer, ids)
