"""The oracle: supervised tokens decode to exactly the assistant turn bodies plus end-of-turn.

The expected bodies are computed independently of the oracle, by re-stating in Python what
each real template does with an assistant message (Qwen3: the `<think>` block on the turns
after the last user query, reasoning split off earlier turns; SmolLM2's ChatML: the content as
is). Conversations come from hypothesis: any role order the templates accept, unicode, empty
strings, special-token-like text inside contents, long turns.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loradoctor.masking.oracle import Oracle
from loradoctor.masking.template import learn

from ..conftest import ROOT


TEMPLATES = ROOT / "loradoctor" / "assets" / "templates"

SPECIALISH = ["", "<|im_end|>", "<|im_start|>assistant\n", "<|im_start|>user\n", "<think>",
              "</think>", "<think>\nhidden thoughts\n</think>\n\n", "None", "Noneassistant\n",
              "\n", "\n\n", " ", "\t", "<|endoftext|>", "<tool_response>x</tool_response>",
              "<|eot_id|>", "e\u0301", "😀", "日本語のテキスト"]

pieces = st.one_of(st.text(max_size=30), st.sampled_from(SPECIALISH))
contents = st.one_of(
    st.lists(pieces, max_size=5).map("".join),
    st.text(min_size=300, max_size=1200),  # a long turn
)
roles = st.sampled_from(["user", "assistant", "assistant", "user", "system"])


@st.composite
def conversations(draw):
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(contents)})
    for role in draw(st.lists(roles, min_size=1, max_size=6)):
        messages.append({"role": role, "content": draw(contents)})
    return messages


def qwen3_bodies(messages: list[dict]) -> list[str]:
    """What the real Qwen3 template renders inside each assistant turn, plus <|im_end|>."""
    last_query, multi_step = len(messages) - 1, True
    for index in range(len(messages) - 1, -1, -1):
        m = messages[index]
        c = m["content"]
        if multi_step and m["role"] == "user" and not (
                c.startswith("<tool_response>") and c.endswith("</tool_response>")):
            multi_step, last_query = False, index
    bodies = []
    for index, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        content, reasoning = m["content"], ""
        if "</think>" in content:
            reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
            content = content.split("</think>")[-1].lstrip("\n")
        is_last = index == len(messages) - 1
        if index > last_query and (is_last or reasoning):
            body = "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + content.lstrip("\n")
        else:
            body = content
        bodies.append(body + "<|im_end|>")
    return bodies


def chatml_bodies(messages: list[dict]) -> list[str]:
    return [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]


def roundtrip(tokenizer, text: str) -> str:
    """The text as the tokenizer can represent it (Qwen3 normalizes to NFC; SmolLM2's vocabulary
    lacks a few bytes of rare characters, which decode as U+FFFD)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def check_property(tokenizer, oracle: Oracle, messages: list[dict], expected: list[str]):
    sample = oracle.sample(messages)
    truth = sample.truth
    assert truth.error is None, truth.error
    assert truth.unlocated == []
    # The oracle tokenizes exactly as transformers' own chat-template path does.
    assert sample.ids == tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"]
    assert [truth.text[t.start:t.end] for t in truth.turns] == expected
    header = oracle.facts.assistant_header
    for (t0, t1), turn, body in zip(sample.ranges, truth.turns, expected):
        assert t1 > t0
        # A token may straddle the header and the body only by whitespace the tokenizer merged.
        lead = truth.text[sample.offsets[t0][0]:turn.start]
        assert lead == "" or (lead.isspace() and header.endswith(lead))
        decoded = tokenizer.decode(sample.ids[t0:t1], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
        assert decoded == roundtrip(tokenizer, lead + body)
        assert sample.ids[t1 - 1] == oracle.facts.end_of_turn_id
        if t1 < len(sample.ids):
            assert sample.offsets[t1][0] >= turn.end
    # Nothing outside the bodies is supervised.
    mask = sample.mask()
    bodies = [(t.start, t.end) for t in truth.turns]
    for i, (a, b) in enumerate(sample.offsets):
        inside = any(a < e and b > s for s, e in bodies)
        assert mask[i] == inside, (i, truth.text[a:b])


@pytest.fixture(scope="module")
def qwen3_oracle(qwen3_tokenizer):
    return Oracle(qwen3_tokenizer)


@pytest.fixture(scope="module")
def smollm2_oracle(smollm2_tokenizer):
    return Oracle(smollm2_tokenizer)


PROPERTY = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@PROPERTY
@given(messages=conversations())
@pytest.mark.slow  # 1.5 to 4 s, measured in the day-to-day lane
def test_qwen3_supervised_tokens_decode_to_the_assistant_bodies(qwen3_tokenizer, qwen3_oracle,
                                                                messages):
    check_property(qwen3_tokenizer, qwen3_oracle, messages, qwen3_bodies(messages))


@PROPERTY
@given(messages=conversations())
def test_smollm2_supervised_tokens_decode_to_the_assistant_bodies(smollm2_tokenizer,
                                                                  smollm2_oracle, messages):
    check_property(smollm2_tokenizer, smollm2_oracle, messages, chatml_bodies(messages))


def test_the_end_of_turn_token_is_derived_from_the_template(qwen3_tokenizer, smollm2_tokenizer):
    qwen, smol = learn(qwen3_tokenizer), learn(smollm2_tokenizer)
    assert (qwen.assistant_header, qwen.end_of_turn, qwen.separator) == \
        ("<|im_start|>assistant\n", "<|im_end|>", "\n")
    assert qwen.end_of_turn_id == qwen3_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert smol.end_of_turn == "<|im_end|>" and smol.bos_token == "<|im_start|>"
    assert smol.preamble.startswith("<|im_start|>system\n")  # SmolLM2's default system prompt


def test_qwen3_history_rewriting_is_detected_and_followed(qwen3_tokenizer, qwen3_oracle):
    assert qwen3_oracle.facts.rewrites_history and qwen3_oracle.facts.drops_reasoning
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "<think>\nplan\n</think>\n\nhello"},
                {"role": "user", "content": "again"},
                {"role": "assistant", "content": "bye"}]
    sample = qwen3_oracle.sample(messages)
    bodies = [sample.truth.text[t.start:t.end] for t in sample.truth.turns]
    assert bodies == ["hello<|im_end|>", "<think>\n\n</think>\n\nbye<|im_end|>"]
    assert sample.truth.rewritten == [1]  # the first reply lost its reasoning


@pytest.mark.slow  # over a second, measured in the day-to-day lane
def test_the_generation_mask_is_used_and_agrees_with_the_rendered_text(qwen3_tokenizer_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(qwen3_tokenizer_dir)
    tok.chat_template = (TEMPLATES / "qwen3_training.jinja").read_text()
    oracle = Oracle(tok)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"},
                {"role": "assistant", "content": "ciao"}]
    sample = oracle.sample(messages)
    assert sample.truth.method == "generation" and sample.truth.generation_mismatch is None
    bodies = [sample.truth.text[t.start:t.end] for t in sample.truth.turns]
    assert bodies == ["<think>\n\n</think>\n\nhello<|im_end|>",
                      "<think>\n\n</think>\n\nciao<|im_end|>"]
    # transformers' own assistant mask (from the same blocks) agrees, except the separator.
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    theirs = out["assistant_masks"]
    ours = sample.mask()
    differ = [i for i, (a, b) in enumerate(zip(theirs, ours)) if bool(a) != b]
    assert all(sample.ids[i] == tok.convert_tokens_to_ids("Ċ") for i in differ) and differ


@pytest.mark.slow  # over a second, measured in the day-to-day lane
def test_a_template_that_refuses_a_conversation_is_reported_not_raised(qwen3_tokenizer_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(qwen3_tokenizer_dir)
    tok.chat_template = (
        "{% for m in messages %}{% if m.role == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    oracle = Oracle(tok)
    assert "System role not supported" in oracle.facts.system_error
    truth = oracle.sample([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}])
    assert "System role not supported" in truth.error


@pytest.mark.slow  # over a second, measured in the day-to-day lane
def test_replies_the_template_trims_are_found_by_rendering_prefixes(tokenizers):
    """Llama-3's template trims every content: not verbatim, so the prefix fallback runs."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tokenizers["llama3"])
    oracle = Oracle(tok)
    assert oracle.facts.end_of_turn == "<|eot_id|>" and oracle.facts.separator == ""
    messages = [{"role": "user", "content": "  hi  "},
                {"role": "assistant", "content": "\n hello there \n"},
                {"role": "user", "content": "again "},
                {"role": "assistant", "content": " bye"}]
    sample = oracle.sample(messages)
    assert sample.truth.method == "prefix" and sample.truth.unlocated == []
    bodies = [sample.truth.text[t.start:t.end] for t in sample.truth.turns]
    assert bodies == ["hello there<|eot_id|>", "bye<|eot_id|>"]
    assert all(sample.eot_ok)
