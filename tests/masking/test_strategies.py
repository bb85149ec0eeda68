"""`loradoctor.strategies`: what the conversations and records it draws hold, for any draw.

The strategies are meant for users' own hypothesis tests, so they are tested the way a user
would use them (`@given(conversations(template=tokenizer))`) with the real Qwen3 tokenizer and
a template that refuses system turns and needs strict alternation. The strongest property: on
every drawn conversation, the oracle's truth agrees with the labels that Qwen3's own template
gives through `{% generation %}` blocks (fixtures/fuzz/correct.py).
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from loradoctor.inputs.records import normalise_record
from loradoctor.strategies import SHAPES, as_record, conversations, records, role_orders

from ..conftest import FIXTURES

FUZZ = FIXTURES / "fuzz"
ROLES = {"system", "user", "assistant"}
quick = settings(max_examples=60, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


@pytest.fixture(scope="session")
def strict_tokenizer(qwen3_tokenizer_dir, tmp_path_factory):
    from transformers import AutoTokenizer
    variants = _module(FIXTURES / "masking" / "tokenizer_variants.py", "tokenizer_variants")
    out = variants.strict(qwen3_tokenizer_dir, tmp_path_factory.mktemp("strict") / "tok")
    return AutoTokenizer.from_pretrained(out)


@pytest.fixture(scope="session")
def generation_mask():
    return _module(FUZZ / "correct.py", "fuzz_correct").generation_mask


@pytest.fixture(scope="session")
def qwen3_oracle(qwen3_tokenizer):
    from loradoctor.masking.oracle import Oracle
    return Oracle(qwen3_tokenizer)


def test_every_drawn_conversation_renders_and_the_oracle_agrees_with_the_templates_own_mask(
        qwen3_tokenizer, qwen3_oracle, generation_mask):
    from loradoctor.masking.compare import Comparer
    from loradoctor.masking.fuzz_search import broken
    from loradoctor.masking.oracle import Truth
    from loradoctor.inputs.user_dataset import UserData

    user = UserData(generation_mask, "correct.py:generation_mask", qwen3_tokenizer, None, None)

    @quick
    @given(conversations(template=qwen3_tokenizer))
    def check(conversation):
        assert {m["role"] for m in conversation} <= ROLES
        assert conversation[-1]["role"] == "assistant"
        sample = qwen3_oracle.sample(conversation)
        assert not isinstance(sample, Truth), sample.error
        assert not sample.truth.unlocated
        comparer = Comparer(qwen3_oracle.facts, user, [], qwen3_tokenizer, 0)
        comparer.add(1, "drawn", user.item(0, conversation, "drawn"), sample)
        assert broken(comparer.result) == []
    check()


@pytest.mark.slow  # writes and loads a tokenizer variant, then a property search
def test_a_template_that_refuses_system_turns_gets_none_and_strict_alternation(
        strict_tokenizer):
    orders = role_orders(strict_tokenizer)
    assert not orders.system and orders.patterns == (("user", "assistant"),)

    @quick
    @given(conversations(template=strict_tokenizer, max_turns=3))
    def check(conversation):
        roles = [m["role"] for m in conversation]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        strict_tokenizer.apply_chat_template(conversation, tokenize=False)  # does not raise
    check()
    with pytest.raises(ValueError, match="refuses a system turn"):
        conversations(template=strict_tokenizer, system=True)


@pytest.mark.parametrize("shape", SHAPES)
def test_every_record_shape_reads_back_as_the_conversation_it_holds(shape):
    @quick
    @given(st.data())
    def check(data):
        record = data.draw(records(shape))
        read = normalise_record(record, "drawn.jsonl", 1)
        assert read.messages is not None, read.problem
        assert read.shape == ("sharegpt" if shape == "sharegpt" else
                              "prompt-completion" if shape.startswith("prompt") else shape)
        assert as_record(read.messages, shape) == record
    check()


def test_system_turns_and_turn_counts_follow_the_arguments():
    @quick
    @given(conversations(system=False, min_turns=2, max_turns=2),
           conversations(system=True, max_turns=1))
    def check(without, with_system):
        assert all(m["role"] != "system" for m in without)
        assert sum(m["role"] == "assistant" for m in without) >= 2
        assert with_system[0]["role"] == "system"
    check()
    with pytest.raises(ValueError, match="min_turns"):
        conversations(min_turns=0)
    with pytest.raises(ValueError, match="shape"):
        records("alpaca")


KINDS = {
    "an empty turn": lambda c: any(m["content"] == "" for m in c),
    "a whitespace-only turn": lambda c: any(m["content"] and not m["content"].strip()
                                            for m in c),
    "a reply that starts with a newline": lambda c: any(
        m["role"] == "assistant" and m["content"].startswith("\n") for m in c),
    "CJK text": lambda c: any("\u4e00" <= ch <= "\u9fff" for m in c for ch in m["content"]),
    "an emoji": lambda c: any(ord(ch) >= 0x1F300 for m in c for ch in m["content"]),
    "right-to-left text": lambda c: any("\u0590" <= ch <= "\u06ff" for m in c
                                        for ch in m["content"]),
    "the template's end-of-turn token as text": lambda c: any("<|im_end|>" in m["content"]
                                                              for m in c),
    "the assistant header in a user turn": lambda c: any(
        m["role"] == "user" and "<|im_start|>assistant\n" in m["content"] for m in c),
    "template markup": lambda c: any("{{" in m["content"] or "{%" in m["content"] for m in c),
    "a very long turn": lambda c: any(len(m["content"]) > 2000 for m in c),
    "a reply with a <think> block": lambda c: any(
        m["role"] == "assistant" and "<think>" in m["content"] and "</think>" in m["content"]
        for m in c),
    "a system turn": lambda c: c[0]["role"] == "system",
    "four exchanges": lambda c: sum(m["role"] == "assistant" for m in c) >= 4,
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_strategy_draws_each_kind_of_input_it_promises(qwen3_tokenizer, kind):
    from hypothesis import find

    found = find(conversations(template=qwen3_tokenizer), KINDS[kind],
                 settings=settings(max_examples=2000, database=None, deadline=None,
                                   phases=[Phase.generate]))
    assert KINDS[kind](found)
