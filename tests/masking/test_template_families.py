"""Every template family, with its official template, through the real CLI.

For each family, a tokenizer carrying that family's special tokens and its vendored template
(`loradoctor.assets.families`; Qwen3, SmolLM2 and MiniMind are the real ones) checks the 40
conversations of `fixtures/masking/families.jsonl` (10 with a system message, 15 with several
exchanges) labelled by `fixtures/masking/family_labellers.py`, which knows nothing of
loradoctor: a correct labeller is clean (no warning, no error), and each family's typical bugs
are caught at the rule they break. docs/templates.md is this table in words.
"""

from __future__ import annotations

import json

import pytest

from ..conftest import MASKING, ROOT

DATA = MASKING / "families.jsonl"
LABELLERS = MASKING / "family_labellers.py"
MINIMIND = ROOT / "fixtures" / "tokenizers" / "minimind"

# family -> {labeller: the warning and error codes it must get}; "Correct" must get none.
BUGS = {
    "HeaderSupervised": {"LD103"}, "EndUnsupervised": {"LD105"},
    "PadIsEos": {"LD108"}, "DoubleBos": {"LD109"},
}
TABLE = {
    "llama3_1": BUGS,
    "llama3_2": {**BUGS, "RenderedAnotherDay": {"LD110"}},
    "gemma3": {"HeaderSupervised": {"LD103"}, "EndUnsupervised": {"LD105"},
               "DoubleBos": {"LD109"}, "EosAsEnd": {"LD103"},
               "PadIsEos": set()},  # eos <eos> is not the end of turn: masking it is harmless
    "mistral_v3": BUGS,
    "mistral_v7_tekken": {**BUGS, "RenderedAnotherDay": {"LD110"}},
    "phi3_5": {"HeaderSupervised": {"LD103"}, "EndUnsupervised": {"LD105"},
               "EosAsEnd": {"LD103"}},
    "phi4": {"HeaderSupervised": {"LD103"}, "EndUnsupervised": {"LD105"},
             "PadIsEos": {"LD108"}},
    "phi4_reasoning": {"HeaderSupervised": {"LD103"}, "EndUnsupervised": {"LD105"}},
    "deepseek_v3": BUGS,
    "deepseek_r1": BUGS,
    "qwen2_5": {"HeaderSupervised": {"LD103"}, "EndUnsupervised": {"LD105"},
                "PadIsEos": {"LD108"}, "HandChatML": {"LD110"}},
    "qwen3": {"HeaderSupervised": {"LD103"}, "EndUnsupervised": {"LD105"},
              "CorrectWithThink": set(), "WholeConversation": {"LD103"}},
    "smollm2": {"HeaderSupervised": {"LD103"}, "HandChatML": {"LD110"},
                "EndUnsupervised": {"LD108"}},  # pad == eos == end of turn: read as padding
    "minimind": {"HeaderSupervised": {"LD103"}, "EndUnsupervised": {"LD105"},
                 "CorrectWithThink": set()},
}
# The correct labeller of every family runs day to day; the bugs (50 more runs) are `slow`.
CASES = [pytest.param(family, labeller, expected, id=f"{family}-{labeller}",
                      marks=[pytest.mark.slow] if labeller != "Correct" else [])
         for family, bugs in TABLE.items()
         for labeller, expected in [("Correct", set()), *bugs.items()]]


@pytest.fixture(scope="module")
def family_dirs(qwen3_tokenizer_dir, smollm2_dir):
    from loradoctor.assets import family_tokenizers_dir
    root = family_tokenizers_dir()
    dirs = {name: root / name for name in TABLE if (root / name).is_dir()}
    dirs.update({"gemma2": root / "gemma2", "hermes2pro_tool_use": root / "hermes2pro_tool_use",
                 "qwen3": qwen3_tokenizer_dir, "smollm2": smollm2_dir, "minimind": MINIMIND})
    return dirs


def check(cli, tokenizer_dir, data=DATA, labeller=None):
    args = ["check-dataset", data, "--tokenizer", tokenizer_dir, "--json"]
    if labeller:
        args += ["--dataset", f"{LABELLERS}:{labeller}"]
    result = cli(*args)
    report = json.loads(result.out)
    assert not [c for c in report["checks"] if c["status"] == "crash"], report["findings"]
    return result.code, report


def flagged(report) -> set[str]:
    return {f["code"] for f in report["findings"] if f["severity"] in ("warning", "error")}


def summary(report, code) -> str:
    return next(c["summary"] for c in report["checks"] if c["code"] == code)


@pytest.mark.parametrize("family, labeller, expected", CASES)
def test_correct_labels_are_clean_and_each_bug_is_caught_at_its_rule(
        cli, family_dirs, family, labeller, expected):
    code, report = check(cli, family_dirs[family], labeller=labeller)
    assert flagged(report) == expected, [(f["code"], f["message"]) for f in report["findings"]]
    assert code == (1 if any(f["severity"] == "error" for f in report["findings"]) else 0)
    assert summary(report, "LD112").startswith("40 of 40 conversations render")
    if labeller == "Correct":  # every sample compared with the template's own ids
        assert summary(report, "LD110") == "40 of 40 samples match the template's ids"


@pytest.mark.slow  # over a second, measured in the day-to-day lane
def test_mistral_needs_no_generation_prompt(cli, family_dirs):
    """The reply follows `[/INST]` directly: a template without a generation prompt is normal,
    and nothing is said about it (issue 18: it was an LD112 warning under the wrong rule)."""
    for family in ("mistral_v3", "mistral_v7_tekken"):
        _, report = check(cli, family_dirs[family], labeller="Correct")
        assert not [f for f in report["findings"] if f["code"] == "LD112"]
        supervised, _, total = summary(report, "LD104").split()[:3]
        assert supervised == total and int(total) > 800


def test_the_template_own_think_block_is_either_choice(cli, family_dirs):
    """Qwen3 writes an empty think block into the last turn, MiniMind's template into every
    turn: left out (Axolotl) or supervised (MiniMind's SFTDataset), both are clean, and the
    summary says when it was left out."""
    for family in ("qwen3", "minimind"):
        _, left_out = check(cli, family_dirs[family], labeller="Correct")
        _, kept = check(cli, family_dirs[family], labeller="CorrectWithThink")
        assert flagged(left_out) == flagged(kept) == set()
        assert summary(left_out, "LD104").endswith(
            "; the empty think block the template writes on its own ('<think>\\n\\n</think>\\n\\n')"
            " is left unsupervised in 40 samples, which is right too: at inference the "
            "generation prompt or the model writes it")
        assert "think block" not in summary(kept, "LD104")
        assert summary(kept, "LD105").startswith("60 of 60 end-of-turn tokens")


def test_gemma3_counts_the_system_text_in_the_first_user_turn_as_system(cli, family_dirs):
    _, report = check(cli, family_dirs["gemma3"], labeller="WholeConversation")
    ld103 = next(f for f in report["findings"] if f["code"] == "LD103")
    assert ld103["evidence"]["tokens"]["system"] > 0 and ld103["evidence"]["tokens"]["user"] > 0


@pytest.mark.slow  # 1.5 to 4 s, measured in the day-to-day lane
def test_gemma2_refuses_a_system_message_and_is_clean_without(cli, family_dirs, tmp_path):
    code, report = check(cli, family_dirs["gemma2"])
    ld112 = [f for f in report["findings"] if f["code"] == "LD112"]
    assert code == 1 and len(ld112) == 1 and ld112[0]["severity"] == "error"
    assert ld112[0]["evidence"]["count"] == 10 and "System role not supported" in \
        ld112[0]["message"]
    assert ld112[0]["fix"] == "merge the system message into the first user turn (the " \
                              "template has none)"
    plain = tmp_path / "no_system.jsonl"
    plain.write_text("".join(line + "\n" for line in DATA.read_text().splitlines()
                             if '"system"' not in line))
    for labeller, expected in (("Correct", set()), ("HeaderSupervised", {"LD103"}),
                               ("EndUnsupervised", {"LD105"}), ("DoubleBos", {"LD109"})):
        _, report = check(cli, family_dirs["gemma2"], plain, labeller)
        assert flagged(report) == expected, labeller


def test_mistral_v3_says_it_drops_the_system_message(cli, family_dirs):
    """Mistral v3 writes the system message only into a conversation's last user turn when
    that turn ends the conversation: in training data it is gone (an info)."""
    _, report = check(cli, family_dirs["mistral_v3"])
    ld114 = next(f for f in report["findings"] if f["code"] == "LD114")
    assert ld114["severity"] == "info" and ld114["evidence"]["count"] == 10
    assert "a system message the template does not write at all" in ld114["message"]
    assert flagged(report) == set()


def test_deepseek_r1_drops_reasoning_from_every_turn(cli, family_dirs, tmp_path):
    records = [json.loads(line) for line in DATA.read_text().splitlines()[:8]]
    for record in records:
        for m in record["messages"]:
            if m["role"] == "assistant":
                m["content"] = f"<think>\nFirst, the facts.\n</think>\n\n{m['content']}"
    data = tmp_path / "think.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    _, report = check(cli, family_dirs["deepseek_r1"], data)
    ld114 = next(f for f in report["findings"] if f["code"] == "LD114")
    assert ld114["severity"] == "info" and ld114["evidence"]["count"] == 8
    assert "drops <think> reasoning from every assistant turn, the last one too" in \
        ld114["message"]
    _, report = check(cli, family_dirs["qwen3"], data)  # Qwen3 keeps the last turn's
    ld114 = next(f for f in report["findings"] if f["code"] == "LD114")
    assert "from earlier assistant turns" in ld114["message"]


def test_tool_calls_and_results_on_qwen2_5(cli, family_dirs, tmp_path):
    """A tool-calling conversation as datasets write it (the call inside the reply, the
    result in a `tool` turn, which Qwen2.5 renders as a user turn)."""
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    records = [{"messages": [
        {"role": "user", "content": f"What is the weather in Paris? ({i})"},
        {"role": "assistant", "content": call},
        {"role": "tool", "content": '{"temperature": 21, "sky": "clear"}'},
        {"role": "assistant", "content": "It is 21 degrees and clear in Paris."}]}
        for i in range(4)]
    data = tmp_path / "tools.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    _, report = check(cli, family_dirs["qwen2_5"], data, "Correct")
    assert flagged(report) == set()
    assert summary(report, "LD105").startswith("8 of 8 end-of-turn tokens")
    _, report = check(cli, family_dirs["qwen2_5"], data, "WholeConversation")
    ld103 = next(f for f in report["findings"] if f["code"] == "LD103")
    assert ld103["evidence"]["tokens"]["tool"] > 0


@pytest.mark.slow  # over a second, measured in the day-to-day lane
def test_hermes_tool_use_template_needs_tools(cli, family_dirs):
    """Hermes 2 Pro's tool_use template iterates `tools`, which records without tools do not
    give (apply_chat_template(messages) raises the same): LD112 says so, nothing else does."""
    code, report = check(cli, family_dirs["hermes2pro_tool_use"])
    assert code == 1 and flagged(report) == {"LD112"}
    assert any("'NoneType' object is not iterable" in f["message"] for f in report["findings"])


@pytest.mark.slow  # 1.5 to 4 s, measured in the day-to-day lane
def test_prepared_token_rows_may_leave_the_think_block_out(cli, family_dirs, tmp_path):
    """`check-dataset --tokenized` on rows prepared the way Axolotl prepares them (the empty
    think block at -100): split into turns by the template's structure, and clean."""
    import importlib.util

    from transformers import AutoTokenizer
    spec = importlib.util.spec_from_file_location("family_labellers", LABELLERS)
    labellers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(labellers)
    for family in ("qwen3", "minimind"):
        dataset = labellers.Correct(AutoTokenizer.from_pretrained(family_dirs[family]), DATA)
        rows = tmp_path / f"{family}.jsonl"
        rows.write_text("".join(json.dumps(dict(zip(("input_ids", "labels"), dataset[i])))
                                + "\n" for i in range(len(dataset))))
        result = cli("check-dataset", rows, "--tokenized", "--tokenizer", family_dirs[family],
                     "--json")
        report = json.loads(result.out)
        assert result.code == 0 and flagged(report) == set(), report["findings"]
        assert summary(report, "LD110") == "40 of 40 rows split into turns by the template's " \
                                           "structure"
        assert "is left unsupervised in 40 samples" in summary(report, "LD104")
