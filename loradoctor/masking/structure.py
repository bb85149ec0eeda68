"""The truth recovered from the tokens alone, when there is no conversation to render.

A trainer's batch, a pre-tokenized file or a collator's output holds `input_ids` and `labels`
but no messages. The template's structure (learned once from probe renders: the assistant
header, the end-of-turn token, the user header, the system header) is enough to split such a
row into turns: decode the row, find every assistant header in the text, and supervise what
follows it up to and including the end-of-turn token, exactly as the record oracle does for a
rendered conversation. Character spans map back to the row's own tokens through offsets, so
the result is an `OracleSample` over the very ids the model will see, and the same comparison
(`compare.Comparer`) judges the labels.

A row that holds the assistant header nowhere is one "no template structure explains"; a row
whose last assistant turn has no end-of-turn token was cut inside that turn.

`variant()` says whether the row follows the tokenizer's own template: the turns found are
rendered again with it, and the first place where the two texts part is reported. TRL renders
Qwen3 with a training template that keeps the empty `<think>` block on every assistant turn;
such rows are self-consistent, not wrong, and are checked against their own structure.
"""

from __future__ import annotations

from dataclasses import dataclass

from .oracle import Oracle, OracleSample, Truth, Turn, mark_inserted
from .template import PROBE_SYSTEM, PROBE_USER, message

NO_STRUCTURE = "no assistant turn the chat template's structure explains (its assistant header " \
               "{header!r} occurs nowhere in the row)"


@dataclass
class Variant:
    """How a row's text compares with the tokenizer's own rendering of the turns it holds."""

    same: bool
    where: str | None = None  # "the template has '...', the row has '...'"


class StructureOracle:
    """Splits token rows into turns with the template's structure (one per tokenizer)."""

    def __init__(self, oracle: Oracle):
        self.oracle = oracle
        self.facts = oracle.facts
        self.tokenizer = oracle.tokenizer
        self.system_header = _system_header(oracle)

    # --- one row ---------------------------------------------------------------------

    def sample(self, ids: list[int]) -> OracleSample | Truth:
        """The oracle over `ids` themselves (padding already removed by the caller)."""
        text, offsets = self.text_and_offsets(ids)
        truth = self.truth(text)
        if truth.error is not None:
            return truth
        return self.oracle.map_tokens(truth, list(ids), offsets)

    def truth(self, text: str) -> Truth:
        f = self.facts
        header, eot = f.assistant_header, f.end_of_turn
        truth = Truth(text=text, method="tokens")
        if not header or header not in text:
            truth.error = NO_STRUCTURE.format(header=header)
            return truth
        cursor = 0
        k = 0
        while True:
            h = text.find(header, cursor)
            if h < 0:
                break
            start = h + len(header)
            e = text.find(eot, start) if eot else -1
            nxt = text.find(header, start)
            if e >= 0 and (nxt < 0 or e < nxt):
                turn = Turn(k, start, e + len(eot), e)
            else:  # cut inside the turn, or a turn the template never closed
                end = nxt if nxt >= 0 else len(text)
                turn = Turn(k, start, end, None)
            truth.turns.append(turn)
            cursor = turn.end
            k += 1
        truth.n_assistant = len(truth.turns)
        truth.regions = self._regions(text, truth.turns)
        mark_inserted(truth, f)
        return truth

    def _regions(self, text: str, turns: list[Turn]) -> list[tuple[int, int, str]]:
        """Where user and system contents sit (for naming what was supervised by mistake)."""
        f = self.facts
        out = []
        for role, header in (("user", f.user_header), ("system", self.system_header)):
            if not header:
                continue
            close = f.closes.get(role) or f.end_of_turn or ""
            p = text.find(header)
            while p >= 0:
                s = p + len(header)
                e = text.find(close, s) if close else -1
                e = e if e >= 0 else len(text)
                if not any(t.start <= s < t.end for t in turns):
                    out.append((s, e, role))
                p = text.find(header, e)
        return sorted(out)

    # --- characters of tokens ------------------------------------------------------------

    def text_and_offsets(self, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
        """The decoded row and each token's character span in it.

        Fast path: the decoded text encodes back to the same ids (a row made by tokenizing the
        rendered text in one call), and the tokenizer's own offsets are exact. Otherwise each
        token's piece is decoded; a run of tokens that only decodes as a whole (a character
        split across byte-level tokens) shares the run's span.
        """
        text = self._decode(ids)
        ((again, offsets),) = self.oracle.encode([text])
        if list(again) == list(ids):
            return text, [tuple(o) for o in offsets]
        pieces = self.tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False,
                                             clean_up_tokenization_spaces=False)
        spans: list[tuple[int, int]] = []
        pos, k = 0, 0
        while k < len(ids):
            if "\ufffd" not in pieces[k]:
                spans.append((pos, pos + len(pieces[k])))
                pos += len(pieces[k])
                k += 1
                continue
            j = k + 1
            while j < len(ids) and "\ufffd" in pieces[j] and j - k < 8:
                j += 1
            width = len(self._decode(ids[k:j]))
            spans.extend([(pos, pos + width)] * (j - k))
            pos += width
            k = j
        if pos != len(text):  # decoding is not additive here: spend the quadratic walk
            spans, prev = [], 0
            for n in range(1, len(ids) + 1):
                cur = len(self._decode(ids[:n]))
                spans.append((min(prev, cur), cur))
                prev = cur
        return text, spans

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)

    # --- which template the row follows ---------------------------------------------------

    def variant(self, sample: OracleSample) -> Variant:
        """Render the row's turns with the tokenizer's template and compare with the row."""
        messages = self.messages(sample.truth)
        if not messages:
            return Variant(True)
        text = sample.truth.text
        try:
            own = self.oracle.renderer.text(messages)
        except Exception as exc:  # noqa: BLE001 - the template refuses these turns
            return Variant(False, f"the tokenizer's template cannot render its turns ({exc})")
        start = text.find(own[:16]) if own else -1
        body = text[start:] if start > 0 else text
        bos = self.facts.bos_token
        if bos and own.startswith(bos) and body.startswith(bos + bos):
            body = body[len(bos):]  # a doubled BOS is LD109's finding, not a template variant
        if body.startswith(own) or own.startswith(body):
            return Variant(True)
        n = 0
        limit = min(len(body), len(own))
        while n < limit and body[n] == own[n]:
            n += 1
        a, b = max(0, n - 10), n + 30
        return Variant(False, f"the tokenizer's template has {own[a:b]!r}, the row has "
                              f"{body[a:b]!r}")

    def messages(self, truth: Truth) -> list[dict]:
        """The turns a row holds, as messages (contents as rendered, end-of-turn removed)."""
        eot = self.facts.end_of_turn or ""
        spans = [(s, e, role) for s, e, role in truth.regions] + [
            (t.start, t.eot_start if t.eot_start is not None else t.end, "assistant")
            for t in truth.turns]
        out = []
        for s, e, role in sorted(spans):
            content = truth.text[s:e]
            if role != "assistant" and eot and content.endswith(eot):
                content = content[:-len(eot)]
            out.append({"role": role, "content": content})
        return out


def _system_header(oracle: Oracle) -> str | None:
    """What the template writes right before a system message's content."""
    f = oracle.facts
    if f.system_error:
        return None
    try:
        text = oracle.renderer.text([message("system", PROBE_SYSTEM), message("user", PROBE_USER)])
    except Exception:  # noqa: BLE001 - a template without system turns
        return None
    p = text.find(PROBE_SYSTEM)
    if p < 0:
        return None
    head = text[:p]
    if f.preamble and head.startswith(f.preamble):
        head = head[len(f.preamble):]
    if f.bos_token and head.startswith(f.bos_token):
        head = head[len(f.bos_token):]
    return head or None
