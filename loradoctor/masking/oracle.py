"""The oracle: which token positions of a conversation *should* carry labels, from the template.

Supervised: every assistant turn's body as the template renders it in the full conversation
(the content, plus whatever the template puts inside the turn, such as the empty
`<think>\\n\\n</think>\\n\\n` block Qwen3 adds to the last assistant turn) and the end-of-turn
token that closes it. Not supervised: system and user turns, the role header
(`<|im_start|>assistant\\n`), the separator after the end-of-turn token, the preamble. Either
way: that empty think block (`OracleSample.optional`), which at inference the generation prompt
or the model writes, so a labeller may leave it out.

How the bodies are found, per conversation:

1. *Verbatim* (the fast path): render once; walk the messages in order, finding each assistant
   header and then `content + end_of_turn` after it; the body runs from the header's end to the
   end-of-turn token's end.
2. *Prefixes* (the fallback, when some content is not rendered verbatim: Llama-3 trims it,
   Qwen3 drops `<think>` blocks from earlier turns): the body starts where the rendering of
   the conversation up to that turn with `add_generation_prompt=True` ends, and ends at the
   last end-of-turn token before the next turn starts.
3. *Generation*: where the template has `{% generation %}` blocks, those are the truth (minus
   the separator after the end-of-turn token), cross-checked against 1 or 2.

Character spans become token ranges through the fast tokenizer's offsets: a token is
supervised when it overlaps a body. A token that straddles the header and the body (the
header's `\\n` merged with a reply that starts with `\\n`) is supervised and recorded.
"""

from __future__ import annotations

import os
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from ..text import one_line
from .template import PROBE_USER, Renderer, TemplateFacts, learn


@dataclass
class Turn:
    """One assistant turn: its body's character span in the rendered text (end-of-turn included)."""

    message: int  # index of the message in the conversation
    start: int  # first character after the assistant header
    end: int  # one past the end-of-turn token (or the body's end when the template has none)
    eot_start: int | None = None  # where the end-of-turn token starts
    content: tuple[int, int] | None = None  # where the content sits, when rendered verbatim
    inserted: tuple[int, int] | None = None  # the template's own empty think block, if any


@dataclass
class Truth:
    """The supervised character spans of one rendered conversation."""

    text: str = ""
    turns: list[Turn] = field(default_factory=list)
    regions: list[tuple[int, int, str]] = field(default_factory=list)  # non-assistant contents
    method: str = "verbatim"  # verbatim | prefix | generation
    unlocated: list[int] = field(default_factory=list)  # assistant messages not found
    rewritten: list[int] = field(default_factory=list)  # assistant contents not verbatim
    dropped: list[int] = field(default_factory=list)  # other messages the text lacks entirely
    generation_mismatch: str | None = None
    error: str | None = None  # the template could not render the conversation
    n_assistant: int = 0


@dataclass
class OracleSample:
    """A conversation's truth mapped onto tokens: `ranges[k]` is turn k's [t0, t1) token range."""

    truth: Truth
    ids: list[int]
    offsets: list[tuple[int, int]]
    ranges: list[tuple[int, int]]
    straddles: list[int]  # turns whose first supervised token starts inside the header
    eot_ok: list[bool]  # turn k's last supervised token is the end-of-turn token
    # Token ranges of text the template writes into a turn on its own (Qwen3's empty think
    # block): inside `ranges`, but a labeller may supervise them or not.
    optional: list[tuple[int, int]] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    @property
    def supervised(self) -> int:
        return sum(t1 - t0 for t0, t1 in self.ranges)

    def mask(self) -> list[bool]:
        out = [False] * len(self.ids)
        for t0, t1 in self.ranges:
            out[t0:t1] = [True] * (t1 - t0)
        return out


class Oracle:
    """Renders, locates and tokenizes conversations for one tokenizer."""

    def __init__(self, tokenizer, facts: TemplateFacts | None = None):
        self.tokenizer = tokenizer
        self.renderer = Renderer(tokenizer)
        self.facts = facts or learn(tokenizer, self.renderer)
        self.backend = getattr(tokenizer, "backend_tokenizer", None)

    # --- characters ------------------------------------------------------------------

    def truth(self, messages: list[dict]) -> Truth:
        n_assistant = sum(m["role"] == "assistant" for m in messages)
        try:
            text, gen = self.renderer.render(messages, generation=True)
        except Exception as exc:  # noqa: BLE001 - a record the template refuses is a finding
            return Truth(error=one_line(exc), n_assistant=n_assistant)
        truth = locate_verbatim(text, messages, self.facts)
        if truth is None:
            truth = locate_by_prefixes(text, messages, self.facts, self.renderer)
            # Mistral v3 writes the system message only into a conversation's last user turn
            # when that turn ends the conversation: in training data it is gone.
            truth.dropped = [k for k, m in enumerate(messages) if m["role"] != "assistant"
                             and m["content"].strip() and m["content"].strip() not in text]
        truth.n_assistant = n_assistant
        if gen is not None:
            apply_generation(truth, gen, self.facts)
        mark_inserted(truth, self.facts)
        return truth

    # --- tokens ----------------------------------------------------------------------

    def encode(self, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """Token ids and character offsets, as `tokenizer(text, add_special_tokens=False)`."""
        if not texts:
            return []
        if self.backend is not None:
            # The backend's padding and truncation are state that persists after a call: the
            # user's dataset code (`tokenizer(text, padding="max_length", max_length=N)`) or
            # their own settings would pad or cut the truth. Set aside for the call, then put
            # back as found.
            b = self.backend
            padding, truncation = b.padding, b.truncation
            if padding is not None:
                b.no_padding()
            if truncation is not None:
                b.no_truncation()
            try:
                encs = b.encode_batch(texts, add_special_tokens=False)
            finally:
                if padding is not None:
                    b.enable_padding(**padding)
                if truncation is not None:
                    b.enable_truncation(**truncation)
            return [(e.ids, e.offsets) for e in encs]
        out = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return list(zip(out["input_ids"], out["offset_mapping"]))

    def samples(self, conversations: list[list[dict]]) -> list[OracleSample | Truth]:
        """The oracle for a batch: an `OracleSample`, or the `Truth` alone when rendering failed."""
        truths = [self.truth(m) for m in conversations]
        return self.assemble(truths, self.encode(rendered_texts(truths)))

    def assemble(self, truths: list[Truth], encoded: list) -> list[OracleSample | Truth]:
        """Each rendered truth with its (ids, offsets) from `encode(rendered_texts(truths))`;
        a truth whose rendering failed stays alone."""
        encoded = iter(encoded)
        return [self.map_tokens(t, *next(encoded)) if t.error is None else t for t in truths]

    def sample(self, messages: list[dict]) -> OracleSample | Truth:
        return self.samples([messages])[0]

    def map_tokens(self, truth: Truth, ids: list[int], offsets) -> OracleSample:
        starts = [a for a, _ in offsets]
        ends = [b for _, b in offsets]
        ranges, straddles, eot_ok = [], [], []
        eot_id = self.facts.end_of_turn_id
        for k, turn in enumerate(truth.turns):
            t0 = bisect_right(ends, turn.start)
            t1 = bisect_left(starts, turn.end)
            ranges.append((t0, t1))
            if t0 < t1 and starts[t0] < turn.start:
                straddles.append(k)
            eot_ok.append(t1 > t0 and turn.eot_start is not None
                          and (ids[t1 - 1] == eot_id if eot_id is not None
                               else starts[t1 - 1] >= turn.eot_start))
        optional = []
        for turn in truth.turns:
            if turn.inserted is not None:  # the tokens wholly inside the block
                s, e = turn.inserted
                optional.append((bisect_left(starts, s), bisect_right(ends, e)))
        return OracleSample(truth, ids, offsets, ranges, straddles, eot_ok, optional)


# --- locating the assistant bodies ---------------------------------------------------


def rendered_texts(truths: list[Truth]) -> list[str]:
    """The texts of the truths that rendered, in order: what `Oracle.encode` takes."""
    return [t.text for t in truths if t.error is None]


def locate_verbatim(text: str, messages: list[dict], facts: TemplateFacts) -> Truth | None:
    """Walk the rendered text in message order; None when some content is not verbatim."""
    header, eot = facts.assistant_header, facts.end_of_turn or ""
    cursor = 0
    truth = Truth(text=text)
    for k, m in enumerate(messages):
        content, role = m["content"], m["role"]
        if role == "assistant":
            if not header:
                return None
            h = text.find(header, cursor)
            if h < 0:
                return None
            start = h + len(header)
            p = text.find(content + eot, start)
            if p < 0 or header in text[start:p]:
                return None
            end = p + len(content) + len(eot)
            truth.turns.append(Turn(k, start, end, p + len(content) if eot else None,
                                    (p, p + len(content))))
            cursor = end
        else:
            needle = content + facts.closes.get(role, "")
            if not needle:
                continue
            p = text.find(needle, cursor)
            if p < 0:
                return None
            truth.regions.append((p, p + len(content), role))
            cursor = p + len(content)
    return truth


def locate_by_prefixes(text: str, messages: list[dict], facts: TemplateFacts,
                       renderer: Renderer) -> Truth:
    """Find each assistant body by rendering the conversation's prefixes (the fallback)."""
    truth = Truth(text=text, method="prefix")
    header, eot, sep = facts.assistant_header, facts.end_of_turn, facts.separator
    prev_end = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = None
        if i > 0:
            try:
                before = renderer.text(messages[:i], add_generation_prompt=True)
            except Exception:  # noqa: BLE001 - e.g. a template that needs a later user turn
                before = None
            if before is not None and text.startswith(before) and len(before) >= prev_end:
                start = len(before)
        if start is None and header:
            h = text.find(header, prev_end)
            if h >= 0:
                start = h + len(header)
        if start is None:
            truth.unlocated.append(i)
            continue
        end = eot_start = None
        for bound in _turn_bounds(text, messages, i, renderer):
            if eot:
                e = text.rfind(eot, start, bound)
                if e >= 0:
                    eot_start, end = e, e + len(eot)
                    break
            elif bound > start:
                end = start + len(text[start:bound].rstrip())
                break
        if end is None and eot:
            # Last resort: the first end-of-turn token followed by the next turn's header.
            nxt = {"user": facts.user_header, "assistant": header}.get(messages[i + 1]["role"]) \
                if i + 1 < len(messages) else None
            e = text.find(eot + sep + (nxt or ""), start)
            if e >= 0:
                eot_start, end = e, e + len(eot)
        if end is None:
            truth.unlocated.append(i)
            continue
        truth.turns.append(Turn(i, start, end, eot_start))
        if m["content"] and m["content"] not in text[start:end]:
            truth.rewritten.append(i)  # not rendered verbatim (trimmed, reasoning moved)
        prev_end = end
    return truth


def _turn_bounds(text: str, messages: list[dict], i: int, renderer: Renderer):
    """Character positions that lie after turn i's end-of-turn token and before turn i+1's body.

    Each is the common prefix of the full text and a rendering of the turns up to i followed by a
    probe message: where the two agree, turn i rendered the same, and the probe's content (after
    its header, which holds no end-of-turn token) is where they part at the latest.
    """
    if i == len(messages) - 1:
        yield len(text)
        return
    for role in dict.fromkeys([messages[i + 1]["role"], "user"]):
        try:
            probe = renderer.text(messages[:i + 1] + [{"role": role, "content": PROBE_USER}])
        except Exception:  # noqa: BLE001 - e.g. a template that refuses two assistants in a row
            continue
        yield len(os.path.commonprefix([probe, text]))
    try:
        alone = renderer.text(messages[:i + 1])
        if text.startswith(alone):
            yield len(alone)
    except Exception:  # noqa: BLE001
        pass


def mark_inserted(truth: Truth, facts: TemplateFacts) -> None:
    """Note in each turn where the template's own empty think block sits, when it opens the
    turn's body (Qwen3 writes it into the last turn only, MiniMind's template into all)."""
    block = facts.inserted
    if not block:
        return
    for turn in truth.turns:
        if truth.text.startswith(block, turn.start) and turn.start + len(block) <= turn.end:
            turn.inserted = (turn.start, turn.start + len(block))


def apply_generation(truth: Truth, spans: list[tuple[int, int]], facts: TemplateFacts) -> None:
    """Make the template's `{% generation %}` blocks the truth; cross-check the located turns."""
    eot = facts.end_of_turn
    text = truth.text
    gen_turns = []
    for gs, ge in spans:
        eot_start = None
        if eot:
            e = text.rfind(eot, gs, ge)
            if e >= 0 and not text[e + len(eot):ge].strip():
                eot_start, ge = e, e + len(eot)  # the separator after it is not the reply
        gen_turns.append((gs, ge, eot_start))
    located = [(t.start, t.end) for t in truth.turns]
    if located != [(gs, ge) for gs, ge, _ in gen_turns] and not truth.generation_mismatch:
        truth.generation_mismatch = (
            f"the template's generation blocks cover {len(gen_turns)} span(s) "
            f"{[(gs, ge) for gs, ge, _ in gen_turns][:3]}, the rendered text locates "
            f"{len(located)} assistant turn(s) {located[:3]}")
    messages = [t.message for t in truth.turns]
    if len(messages) != len(gen_turns):
        messages = list(range(len(gen_turns)))
    truth.turns = [Turn(k, gs, ge, es) for k, (gs, ge, es) in zip(messages, gen_turns)]
    truth.method = "generation"
    truth.unlocated = []
