"""Hypothesis strategies for what fine-tuning code eats: conversations and data records.

Labelling code is usually tested on the three conversations its author thought of. These
strategies draw the ones nobody writes by hand: empty and whitespace-only turns, a reply that
starts with a newline, CJK, emoji and right-to-left text, content that holds the template's own
special tokens or markup, very long turns, replies with `<think>` blocks, system turns, many
turns, and (given a tokenizer) only the role orders its chat template accepts.

    from hypothesis import given
    from loradoctor.strategies import conversations

    @given(conversations(template=tokenizer))
    def test_every_reply_is_supervised(conversation):
        input_ids, labels = my_labels(tokenizer, conversation)
        ...

`records(shape=...)` wraps the same conversations in each record shape loradoctor reads
(`messages`, MiniMind `conversations`, ShareGPT, `prompt`/`completion` as strings, and TRL's
conversational `prompt`/`completion` as lists of turns), for code that reads files.
`loradoctor check-dataset ... --fuzz N` feeds these conversations to your dataset code and
compares each with the chat template's truth.

Shrinking leads to the smallest conversation that still fails: fewer turns, then empty or
shorter contents (hypothesis shrinks the first alternative of each choice best, so the plain
ones come first). Needs hypothesis (`pip install 'loradoctor[fuzz]'`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("loradoctor.strategies needs hypothesis: pip install 'loradoctor[fuzz]'") \
        from exc

SHAPES = ("messages", "conversations", "sharegpt", "prompt-completion",
          "prompt-completion-turns")
SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt", "tool": "tool"}

# Markup from templates in the wild, written into content as text: a template that renders it
# verbatim hands the tokenizer a "special token" the data never meant.
GENERIC_MARKUP = (
    "<|im_start|>", "<|im_end|>", "<|im_start|>assistant\n", "<|endoftext|>",
    "<s>", "</s>", "[INST]", "[/INST]", "<|eot_id|>",
    "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|begin_of_text|>",
    "<start_of_turn>model\n", "<end_of_turn>", "### Assistant:", "### Response:",
    "{{ bos_token }}", "{% generation %}", "{{ messages[0]['content'] }}", "None", "-100",
)
EMOJI = ("🙂", "🚀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "🧪", "😂", "🤖")
WORDS = ("a", "Hi", "the model", "LoRA", "ok", "0", "x = 1", "why?", "print('hi')", "é")
THINK_FORMS = (
    "<think>\n{r}\n</think>\n\n{a}",
    "<think>{r}</think>{a}",
    "<think>\n{r}\n</think>\n{a}",
    "<think>\n\n</think>\n\n{a}",
    "{a}<think>{r}</think>",
    "<think>{r}",
)
CORE_MARKUP = 6  # how many leading markup entries are drawn as often as all the others
LONG_UNITS = ("word ", "数据", "🙂", "lorem ipsum ", "\n", "0")
PAIR = ("user", "assistant")


@dataclass(frozen=True)
class RoleOrders:
    """Which role orders a chat template accepts: a leading system turn, and exchange patterns
    (each ends with the assistant), the plain `user, assistant` first so that shrinking ends
    there."""

    system: bool = True
    patterns: tuple[tuple[str, ...], ...] = (PAIR,)


def text(markup: tuple[str, ...] = GENERIC_MARKUP, long: bool = True) -> st.SearchStrategy[str]:
    """Message content: plain, empty, whitespace, CJK, emoji, right-to-left, markup, long.

    A content is zero to four pieces joined, so a reply can start with a newline, hold a special
    token in the middle of a sentence, or mix scripts.
    """
    plain = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789 .,!?'-", max_size=24)
    whitespace = st.one_of(st.sampled_from([" ", "\n", "\n\n", "\t", " \n", "\r\n", "\u00a0",
                                            "\u3000", "\u200b"]),
                           st.text(alphabet=" \n\t", min_size=1, max_size=4))
    words = st.sampled_from(WORDS)
    cjk = st.one_of(st.sampled_from(["你好，世界", "数据", "ありがとう", "한국어", "。"]),
                    st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x4FFF),
                            min_size=1, max_size=8))
    emoji = st.lists(st.sampled_from(EMOJI), min_size=1, max_size=4).map("".join)
    rtl = st.one_of(st.sampled_from(["مرحبا بالعالم", "שלום עולם", "\u200f", "\u202e",
                                     "abc \u05e9\u05dc\u05d5\u05dd 123"]),
                    st.text(alphabet=st.characters(min_codepoint=0x0621, max_codepoint=0x064A),
                            min_size=1, max_size=8))
    # The first markup entries (a template's own headers and end-of-turn token) are drawn as
    # often as all the others together: they are what labelling code searches for.
    specials = st.one_of(st.sampled_from(markup[:CORE_MARKUP]), st.sampled_from(markup))
    short = st.one_of(plain, whitespace, words, cjk, emoji, rtl, specials)
    piece = short
    if long:
        # Repetition keeps a long turn cheap to draw and easy to shrink (fewer repeats); the
        # short pieces are listed three times so that about one piece in twenty-two is long.
        piece = st.one_of(short, short, short,
                          st.builds(lambda unit, n: unit * n, st.sampled_from(LONG_UNITS),
                                    st.integers(min_value=64, max_value=1200)))
    return st.lists(piece, max_size=4).map("".join)


def replies(content: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[str]:
    """Assistant content: a plain content, or one with a `<think>` block in one of its forms."""
    content = content if content is not None else text()
    think = st.builds(lambda form, r, a: form.format(r=r, a=a), st.sampled_from(THINK_FORMS),
                      content, content)
    return st.one_of(content, think)


def conversations(template: Any = None, *, system: bool | None = None, min_turns: int = 1,
                  max_turns: int = 4, long: bool = True) -> st.SearchStrategy[list[dict]]:
    """Conversations as `[{"role", "content"}, ...]`, ending with an assistant reply.

    `template`: a tokenizer with a chat template (its special tokens go into the markup, and
    only role orders it renders are drawn: no system turn for a template that refuses one,
    strict alternation for one that needs it), or None for ChatML-like markup and free orders.
    `system`: always (True), never (False) or sometimes (None) a leading system turn.
    `min_turns` / `max_turns`: how many exchanges (a user turn and the reply, or an accepted
    variation such as two user turns before a reply). `long`: allow turns of thousands of
    characters.
    """
    if min_turns < 1 or max_turns < min_turns:
        raise ValueError(f"turns: need 1 <= min_turns <= max_turns, got {min_turns}, {max_turns}")
    markup, orders = GENERIC_MARKUP, RoleOrders(patterns=(PAIR, ("user", "user", "assistant"),
                                                          ("user", "assistant", "assistant")))
    if template is not None:
        markup, orders = template_markup(template), role_orders(template)
    if system is True and not orders.system:
        raise ValueError("system=True: this chat template refuses a system turn")
    if system is False:
        orders = RoleOrders(False, tuple(p for p in orders.patterns if "system" not in p))
    content = text(markup, long)
    return _conversation(orders, system, min_turns, max_turns, content, replies(content))


def records(shape: str = "messages", template: Any = None,
            **kwargs: Any) -> st.SearchStrategy[dict]:
    """Data records of one shape (see `SHAPES`), holding `conversations(template, **kwargs)`.

    `prompt-completion` records hold one exchange without a system turn (a prompt string and a
    completion string); `prompt-completion-turns` records hold the turns before the last reply
    as `prompt` and that reply as `completion` (TRL's conversational form).
    """
    if shape not in SHAPES:
        raise ValueError(f"shape {shape!r}: expected one of {', '.join(SHAPES)}")
    if shape == "prompt-completion":
        markup = template_markup(template) if template is not None else GENERIC_MARKUP
        content = text(markup, kwargs.get("long", True))
        strategy = _conversation(RoleOrders(False), False, 1, 1, content, replies(content))
    else:
        strategy = conversations(template, **kwargs)
    return strategy.map(lambda conversation: as_record(conversation, shape))


def as_record(conversation: list[dict], shape: str = "messages") -> dict:
    """One conversation as a record of `shape`, as it would stand on a line of a JSON Lines file."""
    turns = [{"role": m["role"], "content": m["content"]} for m in conversation]
    if shape == "messages":
        return {"messages": turns}
    if shape == "conversations":
        return {"conversations": turns}
    if shape == "sharegpt":
        return {"conversations": [{"from": SHAREGPT_ROLES[m["role"]], "value": m["content"]}
                                  for m in turns]}
    if shape == "prompt-completion":
        if [m["role"] for m in turns] != list(PAIR):
            raise ValueError("a prompt/completion record holds one user turn and its reply")
        return {"prompt": turns[0]["content"], "completion": turns[1]["content"]}
    if shape == "prompt-completion-turns":
        return {"prompt": turns[:-1], "completion": turns[-1:]}
    raise ValueError(f"shape {shape!r}: expected one of {', '.join(SHAPES)}")


# --- what a template accepts ------------------------------------------------------------


def template_markup(tokenizer) -> tuple[str, ...]:
    """The template's own headers and end-of-turn token first, then the tokenizer's special and
    added tokens, then generic markup from other templates."""
    from .masking.template import learn

    facts = learn(tokenizer)
    own = [s for s in (facts.assistant_header, facts.end_of_turn, facts.user_header,
                       (facts.end_of_turn or "") + facts.separator, facts.bos_token,
                       facts.eos_token) if s]
    found: list[str] = list(getattr(tokenizer, "all_special_tokens", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found += [str(getattr(t, "content", t)) for t in decoder.values()][:64]
    core = list(dict.fromkeys(own))[:CORE_MARKUP]
    core += [m for m in GENERIC_MARKUP if m not in core][:CORE_MARKUP - len(core)]
    return tuple(dict.fromkeys([*core, *found, *GENERIC_MARKUP]))


def role_orders(tokenizer) -> RoleOrders:
    """The role orders `tokenizer`'s chat template renders without raising."""
    from .masking.template import Renderer

    renderer = Renderer(tokenizer)

    def renders(roles: list[str]) -> bool:
        try:
            renderer.text([{"role": r, "content": f"probe {i}"} for i, r in enumerate(roles)])
            return True
        except Exception:  # noqa: BLE001 - a template refusing an order raises anything
            return False

    system = renders(["system", *PAIR])
    candidates = [("user", "user", "assistant"), ("user", "assistant", "assistant")]
    if system:
        candidates.append(("system", *PAIR))  # a system turn mid-conversation
    patterns = [PAIR] + [p for p in candidates
                         if renders([*PAIR, *p]) and renders([*p, *PAIR])]
    return RoleOrders(system, tuple(patterns))


@st.composite
def _exchange(draw, patterns, content, reply) -> list[dict]:
    """One exchange: a role pattern that ends with the assistant, and a content per turn."""
    pattern = draw(st.sampled_from(patterns))
    return [{"role": role, "content": draw(reply if role == "assistant" else content)}
            for role in pattern]


@st.composite
def _conversation(draw, orders: RoleOrders, system: bool | None, min_turns: int,
                  max_turns: int, content, reply) -> list[dict]:
    messages = []
    if orders.system and (system is True or (system is None and draw(st.booleans()))):
        messages.append({"role": "system", "content": draw(content)})
    # A list of exchanges, so that shrinking can delete any one of them (the ones before a
    # long turn too), not only the last.
    exchanges = draw(st.lists(_exchange(orders.patterns, content, reply), min_size=min_turns,
                              max_size=max_turns))
    return messages + [m for exchange in exchanges for m in exchange]
