"""What a chat template looks like, learned once per tokenizer by rendering probe conversations.

Nothing here comes from a table of model families: the assistant header is what the template
writes for `add_generation_prompt=True` (or, for a template without a generation prompt such as
Mistral's, what a rendered reply follows), the end-of-turn token is the first added token the
template writes after an assistant reply, the preamble is what it writes before the first user
turn when there is no system message, an empty think block it writes into replies on its own
is told apart from the header, and so on. Every probe uses plain sentinel contents (but the one
that asks where reasoning goes), so a template that inspects content (Qwen3 looks for
`</think>`) sees nothing special.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from ..text import one_line

PROBE_SYSTEM = "loradoctor system probe"
PROBE_USER = "loradoctor user probe"
PROBE_USER_2 = "loradoctor second user probe"
PROBE_ASSISTANT = "loradoctor assistant probe"
PROBE_ASSISTANT_2 = "loradoctor second assistant probe"
PROBE_REASONING = "loradoctor reasoning probe"

GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
SPECIAL_VARS = ("bos_token", "eos_token", "pad_token", "unk_token")


def message(role: str, content: str) -> dict[str, str]:
    """One chat message, as the template takes it."""
    return {"role": role, "content": content}


class Renderer:
    """Renders conversations exactly as `apply_chat_template(..., tokenize=False)` would.

    The template receives the tokenizer's special tokens as variables (`bos_token`, ...), as in
    transformers. `render(..., generation=True)` also returns the character spans of the
    template's `{% generation %}` blocks (only meaningful when the template has them).
    """

    def __init__(self, tokenizer):
        template = getattr(tokenizer, "chat_template", None)
        if not isinstance(template, str):
            template = tokenizer.get_chat_template()
        self.template: str = template
        self.kwargs: dict[str, Any] = {k: (v if isinstance(v, (str, list)) else str(v))
                                       for k, v in tokenizer.special_tokens_map.items()}
        self.has_generation = bool(GENERATION_TAG.search(template))
        try:
            from transformers.utils.chat_template_utils import render_jinja_template
        except ImportError:  # older transformers: go through the tokenizer (slower, same text)
            render_jinja_template = None
        self._render_jinja = render_jinja_template
        self._tokenizer = tokenizer

    def render(self, messages: list[dict], add_generation_prompt: bool = False,
               generation: bool = False) -> tuple[str, list[tuple[int, int]] | None]:
        if self._render_jinja is None:
            text = self._tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt)
            return text, None
        want = generation and self.has_generation
        rendered, spans = self._render_jinja(
            conversations=[messages], chat_template=self.template,
            return_assistant_tokens_mask=want, add_generation_prompt=add_generation_prompt,
            **self.kwargs)
        return rendered[0], ([tuple(s) for s in spans[0]] if want else None)

    def text(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.render(messages, add_generation_prompt)[0]


@dataclass
class TemplateFacts:
    """The template's structure, as measured on probe conversations."""

    assistant_header: str | None = None  # "<|im_start|>assistant\n"
    generation_prompt: str = ""  # what add_generation_prompt appends ("" for Mistral's)
    inserted: str = ""  # an empty reasoning block the template writes into turns on its own
    end_of_turn: str | None = None  # "<|im_end|>" / "<|eot_id|>": closes every assistant turn
    end_of_turn_id: int | None = None
    separator: str = ""  # template text right after the end-of-turn token ("\n" in ChatML)
    user_header: str | None = None
    closes: dict[str, str] = field(default_factory=dict)  # role -> token closing its content
    preamble: str = ""  # written before the first user turn when there is no system message
    bos_token: str | None = None
    bos_id: int | None = None
    eos_token: str | None = None
    eos_id: int | None = None
    pad_token: str | None = None
    pad_id: int | None = None
    emits_bos: bool = False  # the rendered text starts with the BOS token
    adds_bos: bool = False  # tokenizer(text) (add_special_tokens=True) prepends a BOS
    adds_eos: bool = False
    has_generation: bool = False
    rewrites_history: str | None = None  # how, when earlier turns render differently
    drops_reasoning: bool = False  # <think> blocks of earlier assistant turns are dropped
    drops_final_reasoning: bool = False  # and the last turn's too (DeepSeek-R1)
    system_error: str | None = None  # the template refuses a system message
    alternation_error: str | None = None  # the template refuses two user turns in a row
    missing_vars: list[str] = field(default_factory=list)  # read by the template, None here
    problems: list[str] = field(default_factory=list)  # what could not be learned

    def to_evidence(self) -> dict[str, Any]:
        return {"assistant_header": self.assistant_header, "end_of_turn": self.end_of_turn,
                "end_of_turn_id": self.end_of_turn_id, "separator": self.separator,
                "emits_bos": self.emits_bos, "adds_bos": self.adds_bos,
                "has_generation": self.has_generation, "rewrites_history": self.rewrites_history}


def _special_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids.update(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return ids


def _id_of(tokenizer, token: str | None) -> int | None:
    if token is None:
        return None
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def learn(tokenizer, renderer: Renderer | None = None) -> TemplateFacts:
    """Measure the template's structure; what cannot be measured is listed in `problems`."""
    r = renderer or Renderer(tokenizer)
    f = TemplateFacts(has_generation=r.has_generation)
    for name in ("bos", "eos", "pad"):
        token = getattr(tokenizer, f"{name}_token", None)
        setattr(f, f"{name}_token", token)
        setattr(f, f"{name}_id", getattr(tokenizer, f"{name}_token_id", None))
    f.missing_vars = [v for v in SPECIAL_VARS
                      if re.search(rf"\b{v}\b", r.template) and getattr(tokenizer, v, None) is None]

    user = [message("user", PROBE_USER)]
    pair = user + [message("assistant", PROBE_ASSISTANT)]
    try:
        user_text = r.text(user)
        gen_text = r.text(user, add_generation_prompt=True)
        pair_text = r.text(pair)
    except Exception as exc:  # noqa: BLE001 - a template that cannot render is a finding
        f.problems.append(f"the template cannot render [user, assistant]: {one_line(exc)}")
        return f
    _learn_assistant_header(f, tokenizer, user_text, gen_text, pair_text)
    _learn_inserted(f, r, tokenizer, pair_text)
    _learn_end_of_turn(f, tokenizer, pair_text)
    _learn_later_turns(f, r, tokenizer, pair, pair_text, user_text)
    _learn_refusals(f, r, tokenizer, pair)
    f.emits_bos = bool(f.bos_token) and pair_text.startswith(f.bos_token)
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    f.adds_bos = (f.bos_id is not None and len(with_special) > len(without)
                  and with_special[0] == f.bos_id)
    f.adds_eos = (f.eos_id is not None and len(with_special) > len(without)
                  and with_special[-1] == f.eos_id)
    if f.assistant_header is None:
        f.problems.append("no assistant header could be learned from the template")
    return f


def _learn_assistant_header(f: TemplateFacts, tokenizer, user_text: str, gen_text: str,
                            pair_text: str) -> None:
    """The text before an assistant reply that is no part of it.

    `before` is what a rendered reply follows once the user's turn has been written. Where
    the generation prompt is (the start of) it, that is the header, and the rest of `before`
    is text the template writes into the turn itself (Qwen3's empty think block). Otherwise
    (DeepSeek-R1's generation prompt runs on into `<think>\\n`) the header is `before`.
    Templates without a generation prompt (Mistral's: the reply follows `[/INST]`) and those
    whose user turn already ends with the header get the text from the end of the user's
    content to the reply: a header must be something to find.
    """
    if PROBE_ASSISTANT not in pair_text:
        return
    reply_at = pair_text.index(PROBE_ASSISTANT)
    before = pair_text[_shared_start(tokenizer, user_text, pair_text[:reply_at]):reply_at]
    f.generation_prompt = gen_text[_shared_start(tokenizer, user_text, gen_text):]
    gen = f.generation_prompt
    if gen and before.startswith(gen):
        f.assistant_header = gen
    elif before.strip():
        f.assistant_header = before
    elif PROBE_USER in pair_text[:reply_at]:
        f.assistant_header = pair_text[pair_text.index(PROBE_USER) + len(PROBE_USER):reply_at]
    if f.assistant_header is not None and not f.assistant_header.strip():
        f.assistant_header = None


def _learn_inserted(f: TemplateFacts, r: Renderer, tokenizer, pair_text: str) -> None:
    """An empty reasoning block the template writes into an assistant turn on its own.

    Qwen3 writes `<think>\\n\\n</think>\\n\\n` before the last reply; MiniMind's template
    before every reply and in its generation prompt. It is the block a reply's reasoning
    would sit in, with no reasoning: rendering a reply that has some (`<think>\\nR\\n</think>`)
    gives the same text with R inside. At inference the generation prompt or the model writes
    it, so a labeller may supervise it or not. Where the block sits at the end of the header
    (MiniMind's), the header is cut before the block's first added token.
    """
    header = f.assistant_header
    if not header or PROBE_ASSISTANT not in pair_text:
        return
    reasoned = [message("user", PROBE_USER),
                message("assistant", f"<think>\n{PROBE_REASONING}\n</think>\n\n{PROBE_ASSISTANT}")]
    try:
        with_reasoning = r.text(reasoned)
    except Exception:  # noqa: BLE001 - only a description; rendering errors show per record
        return
    if PROBE_REASONING not in with_reasoning:
        f.drops_final_reasoning = True  # DeepSeek-R1 keeps no reasoning, even in the last turn
        return
    reply_at = pair_text.index(PROBE_ASSISTANT)
    at = pair_text.rfind(header, 0, reply_at)
    if at < 0:
        return
    turn = pair_text[at:reply_at]  # the header and whatever precedes the reply
    opened = with_reasoning[at:with_reasoning.index(PROBE_REASONING)]
    closed = with_reasoning[with_reasoning.index(PROBE_REASONING) + len(PROBE_REASONING):
                            with_reasoning.index(PROBE_ASSISTANT)]
    if with_reasoning[:at] != pair_text[:at] or opened + closed != turn:
        return  # the reasoning is not in a block the plain reply renders empty
    cut = len(header)
    if cut > len(opened):  # the block opens inside what was taken for the header
        cut = _last_added_token_start(tokenizer, opened)
    if 0 < cut < len(turn) and opened.startswith(turn[:cut]):
        f.assistant_header, f.inserted = turn[:cut], turn[cut:]


def _shared_start(tokenizer, a: str, b: str) -> int:
    """Where `b` stops agreeing with `a`, backed off to the start of the token of `b` the
    difference falls in (Phi-3.5's `<|endoftext|>` and `<|assistant|>` share `<|`)."""
    common = len(os.path.commonprefix([a, b]))
    if common == len(b):
        return common
    offsets = tokenizer(b, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return max([end for _, end in offsets if end <= common], default=0)


def _last_added_token_start(tokenizer, text: str) -> int:
    """Where the last added token of `text` starts (0 when it holds none after its start)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    special = _special_ids(tokenizer)
    starts = [a for i, (a, _) in zip(enc["input_ids"], enc["offset_mapping"]) if i in special]
    return starts[-1] if starts else 0


def _learn_end_of_turn(f: TemplateFacts, tokenizer, pair_text: str) -> None:
    """The first added token right after the reply (and what separates it from the next
    turn), and the token that closes a user's content."""
    after = pair_text[pair_text.index(PROBE_ASSISTANT) + len(PROBE_ASSISTANT):] \
        if PROBE_ASSISTANT in pair_text else ""
    f.end_of_turn, f.separator = _first_control_token(tokenizer, after)
    if f.end_of_turn is None and after.strip():
        f.end_of_turn, f.separator = after.rstrip(), after[len(after.rstrip()):]
    f.end_of_turn_id = _id_of(tokenizer, f.end_of_turn)
    f.closes["user"] = _first_control_token(
        tokenizer, pair_text[pair_text.index(PROBE_USER) + len(PROBE_USER):])[0] or ""


def _learn_later_turns(f: TemplateFacts, r: Renderer, tokenizer, pair: list[dict],
                       pair_text: str, user_text: str) -> None:
    """With a second exchange after the first: whether earlier turns render differently (and
    drop reasoning), the user header, and the preamble before the first user turn."""
    four = pair + [message("user", PROBE_USER_2), message("assistant", PROBE_ASSISTANT_2)]
    try:
        four_text = r.text(four)
        # The first turn up to its end-of-turn token: what follows it in `pair_text` may be
        # text the template writes only at the very end (Phi-3.5's eos).
        first = pair_text[:pair_text.index(PROBE_ASSISTANT) + len(PROBE_ASSISTANT)
                          + len(f.end_of_turn or "")] if PROBE_ASSISTANT in pair_text else pair_text
        if not four_text.startswith(first):
            f.rewrites_history = ("an assistant turn renders differently once a later user turn "
                                  "follows, so supervision follows the full conversation's "
                                  "rendering")
        a_end = four_text.index(PROBE_ASSISTANT) + len(PROBE_ASSISTANT) \
            + len(f.end_of_turn or "")
        if PROBE_USER_2 in four_text:
            gap = four_text[a_end:four_text.index(PROBE_USER_2)]
            f.separator = gap[:_shared_start(tokenizer, f.separator, gap)]
            f.user_header = gap[len(f.separator):]
    except Exception as exc:  # noqa: BLE001
        f.problems.append(f"the template cannot render a two-turn conversation: {one_line(exc)}")
    prefix = user_text[:user_text.index(PROBE_USER)] if PROBE_USER in user_text else ""
    if f.user_header and prefix.endswith(f.user_header):
        f.preamble = prefix[:len(prefix) - len(f.user_header)]

    thinking = [message("user", PROBE_USER),
                message("assistant",
                        f"<think>\n{PROBE_REASONING}\n</think>\n\n{PROBE_ASSISTANT}"),
                message("user", PROBE_USER_2), message("assistant", PROBE_ASSISTANT_2)]
    try:
        f.drops_reasoning = PROBE_REASONING not in r.text(thinking)
    except Exception:  # noqa: BLE001 - only a description; rendering errors show per record
        pass


def _learn_refusals(f: TemplateFacts, r: Renderer, tokenizer, pair: list[dict]) -> None:
    """Whether the template takes a system message (and what closes it), and two user turns
    in a row."""
    try:
        sys_text = r.text([message("system", PROBE_SYSTEM)] + pair)
        if PROBE_SYSTEM not in sys_text:
            f.system_error = "the template drops the system message"
        else:
            f.closes["system"] = _first_control_token(
                tokenizer, sys_text[sys_text.index(PROBE_SYSTEM) + len(PROBE_SYSTEM):])[0] or ""
    except Exception as exc:  # noqa: BLE001
        f.system_error = one_line(exc)
    try:
        r.text([message("user", PROBE_USER), message("user", PROBE_USER_2),
                message("assistant", PROBE_ASSISTANT)])
    except Exception as exc:  # noqa: BLE001
        f.alternation_error = one_line(exc)


def _first_control_token(tokenizer, text: str) -> tuple[str | None, str]:
    """The added token `text` starts with (as the template wrote it) and what follows it."""
    if not text:
        return None, ""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    if not ids or offsets[0][0] != 0 or ids[0] not in _special_ids(tokenizer):
        return None, text
    end = offsets[0][1]
    return text[:end], text[end:]
