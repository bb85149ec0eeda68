"""Every LD1xx masking rule on its bad and its good fixture, through the real CLI.

The fixtures live in fixtures/masking/ (one `ldNNN.py` per rule with the user code, plus the
small JSON Lines files they run on). Tokenizers are the real Qwen3 and SmolLM2 ones, and
variants built from the real Qwen3 vocabulary (fixtures/masking/tokenizer_variants.py): a
Llama-3-style one (its template writes BOS and its tokenizer adds another), the same without a
bos_token, and one whose template refuses system messages and non-alternating turns.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from ..conftest import DATA, FIXTURES

pytestmark = pytest.mark.usefixtures('load_each_tokenizer_once')

MASKING = FIXTURES / "masking"
PERSONA = DATA / "persona.jsonl"
MULTITURN = MASKING / "multiturn.jsonl"
NANOGPT = f"{FIXTURES / 'models' / 'nanogpt_style.py'}:GPT"


@pytest.fixture
def check(cli, tokenizers):
    """Run `check-dataset --json`; return (exit code, {code: [severities]}, report)."""
    def run(data, tokenizer, dataset=None, *extra):
        args = ["check-dataset", data, "--tokenizer", tokenizers[tokenizer], "--json", *extra]
        if dataset:
            args += ["--dataset", f"{MASKING / dataset}"]  # file.py:NAME in fixtures/masking
        result = cli(*args)
        assert result.code in (0, 1), result.err
        report = json.loads(result.out)
        found: dict[str, list[str]] = {}
        for f in report["findings"]:
            found.setdefault(f["code"], []).append(f["severity"])
        assert "LD001" not in found, [f["message"] for f in report["findings"]]
        return result.code, found, report
    return run


# (rule, data, tokenizer, bad dataset, good dataset, extra args, severity of the bad finding)
CASES = [
    ("LD101", PERSONA, "qwen3", "ld101.py:bad", "ld101.py:good", (), "error"),
    ("LD102", PERSONA, "qwen3", "ld102.py:BadMarkerDataset", "ld102.py:GoodMarkerDataset", (),
     "error"),
    ("LD103", MULTITURN, "qwen3", "ld103.py:bad", "ld103.py:good", (), "warning"),
    ("LD104", MULTITURN, "qwen3", "ld104.py:bad", "ld104.py:good", (), "warning"),
    ("LD105", MULTITURN, "qwen3", "ld105.py:bad", "ld105.py:good", (), "error"),
    ("LD106", MULTITURN, "qwen3", "ld106.py:bad", "ld106.py:good", (), "error"),
    ("LD108", PERSONA, "smollm2", "ld108.py:MaskById", "ld108.py:MaskByPosition", (), "error"),
    ("LD109", PERSONA, "llama3", "ld109.py:bad", "ld109.py:good", (), "warning"),
    ("LD110", PERSONA, "smollm2", "ld110.py:bad", "ld110.py:good", (), "warning"),
    ("LD111", MASKING / "newline_replies.jsonl", "qwen3", "ld111.py:MarkerSearch",
     "ld111.py:OffsetSearch", (), "warning"),
    # For a nanoGPT-style model (no shift inside, -1 ignored), measured with --model.
    ("LD116", MULTITURN, "qwen3", "ld116.py:bad", "ld116.py:good", ("--model", NANOGPT), "error"),
    ("LD117", MULTITURN, "qwen3", "ld117.py:bad", "ld117.py:good", ("--model", NANOGPT), "error"),
]


@pytest.mark.parametrize("code,data,tok,bad,good,extra,severity", CASES,
                         ids=[c[0] for c in CASES])
def test_each_rule_flags_its_bad_fixture_and_passes_its_good_one(check, code, data, tok, bad,
                                                                 good, extra, severity):
    exit_bad, found, _ = check(data, tok, bad, *extra)
    assert severity in found.get(code, []), found
    assert exit_bad == (1 if "error" in [s for v in found.values() for s in v] else 0)
    exit_good, found_good, _ = check(data, tok, good, *extra)
    assert exit_good == 0 and not found_good.get(code), found_good
    assert not [s for v in found_good.values() for s in v if s != "info"], found_good


def test_ld107_flags_replies_cut_by_the_dataset_classes_truncation(check):
    data = MASKING / "long_prompts.jsonl"
    code, found, report = check(data, "qwen3", "ld107.py:Truncating", "--max-length", "40")
    assert code == 1 and sorted(found["LD107"]) == ["error", "warning"]
    cut_all = next(f for f in report["findings"] if f["code"] == "LD107" and
                   f["severity"] == "error")
    assert cut_all["evidence"]["lines"] == [1] and cut_all["evidence"]["max_length"] == 40
    code, found, _ = check(data, "qwen3", "ld107.py:Truncating", "--max-length", "1024")
    assert code == 0 and "LD107" not in found


def test_ld107_without_a_dataset_predicts_the_cut_from_max_length(check):
    data = MASKING / "long_prompts.jsonl"
    code, found, report = check(data, "qwen3", None, "--max-length", "40")
    assert code == 1 and sorted(found["LD107"]) == ["error", "warning"]
    part = next(f for f in report["findings"] if f["severity"] == "warning")
    assert part["evidence"]["lines"] == [3] and part["evidence"]["tokens_cut"] > 0
    code, found, report = check(data, "qwen3", None, "--max-length", "1024")
    assert code == 0 and "LD107" not in found
    code, found, report = check(data, "qwen3")
    ld107 = next(c for c in report["checks"] if c["code"] == "LD107")
    assert ld107["status"] == "pass" and "longest conversation" in ld107["summary"]


def test_ld101_without_a_dataset_flags_conversations_with_no_assistant_turn(check):
    code, found, report = check(MASKING / "no_assistant.jsonl", "qwen3")
    assert code == 1 and found["LD101"] == ["error"]
    (f,) = [f for f in report["findings"] if f["code"] == "LD101"]
    assert f["evidence"]["lines"] == [2, 3] and f["location"].endswith("no_assistant.jsonl:2")
    code, found, _ = check(PERSONA, "qwen3")
    assert code == 0 and "LD101" not in found


def test_ld103_calls_a_supervised_separator_after_the_end_of_turn_token_harmless(check):
    code, found, report = check(MULTITURN, "qwen3", "ld103.py:separator")
    assert code == 0 and found == {"LD103": ["info"]}
    (f,) = report["findings"]
    assert "harmless" in f["message"] and f["evidence"]["count"] == 8


def test_ld103_counts_prompt_tokens_by_kind(check):
    _, _, report = check(MULTITURN, "qwen3", "ld103.py:bad")
    (f,) = [f for f in report["findings"] if f["code"] == "LD103"]
    assert set(f["evidence"]["tokens"]) == {"system", "user", "template"}
    assert f["evidence"]["count"] == 8 and f["evidence"]["samples"] == 8


def test_ld102_finds_the_marker_built_in_a_labelling_functions_source(check):
    code, found, report = check(PERSONA, "qwen3", "ld102.py:bad_function")
    assert code == 1 and found["LD102"] == ["error"] and found["LD101"] == ["error"]
    (f,) = [f for f in report["findings"] if f["code"] == "LD102"]
    assert f["evidence"]["attribute"] == "bos_token"
    assert f["location"].startswith("ld102.py:") and ".format(tokenizer.bos_token)" in f["message"]


def test_ld108_without_a_dataset_only_notes_that_pad_is_the_end_of_turn_token(check):
    code, found, _ = check(PERSONA, "smollm2")
    assert code == 0 and found.get("LD108") == ["info"]
    code, found, _ = check(PERSONA, "qwen3")
    assert "LD108" not in found


@pytest.mark.slow  # 1.5 to 4 s, measured in the day-to-day lane
def test_ld109_without_a_dataset_notes_a_template_that_writes_bos_for_a_bos_adding_tokenizer(
        check):
    code, found, _ = check(PERSONA, "llama3")
    assert code == 0 and found.get("LD109") == ["info"]
    assert "LD109" not in check(PERSONA, "qwen3")[1]


def test_ld110_names_the_missing_preamble_and_still_compares_the_labels(check):
    _, found, report = check(PERSONA, "smollm2", "ld110.py:bad")
    (f,) = [f for f in report["findings"] if f["code"] == "LD110"]
    assert "preamble is missing" in f["message"] and "You are a helpful AI" in f["message"]
    assert set(found) == {"LD110"}  # aligned past the preamble: the labels themselves are right
    assert report["summary"]["masking"]["samples_compared"] == 24


def test_ld111_without_a_dataset_counts_replies_that_merge_with_the_header(check):
    code, found, report = check(MASKING / "newline_replies.jsonl", "qwen3")
    assert code == 0 and found == {"LD111": ["info"]}
    (f,) = report["findings"]
    assert f["evidence"]["turns"] == 4 and f["evidence"]["lines"] == [1, 2, 3, 4]


@pytest.mark.slow  # 1.5 to 4 s, measured in the day-to-day lane
def test_ld112_reports_records_a_strict_template_refuses_with_their_lines(check):
    code, found, report = check(MASKING / "system_and_repeats.jsonl", "strict")
    assert code == 1 and found["LD112"] == ["error", "error"]
    by_error = {f["evidence"]["error"]: f for f in report["findings"] if f["code"] == "LD112"}
    system = by_error["TemplateError: System role not supported"]
    assert system["evidence"]["lines"] == [2, 4] and "system" in system["fix"]
    (alternate,) = [f for e, f in by_error.items() if "alternate" in e]
    assert alternate["evidence"]["lines"] == [3]
    code, found, _ = check(PERSONA, "strict")
    assert code == 0 and "LD112" not in found


@pytest.mark.slow  # 1.5 to 4 s, measured in the day-to-day lane
def test_ld113_flags_a_template_variable_the_tokenizer_does_not_have(check):
    code, found, report = check(PERSONA, "llama3-no-bos")
    assert "warning" in found["LD113"]
    (f,) = [f for f in report["findings"] if f["code"] == "LD113" and f["severity"] == "warning"]
    assert "bos_token" in f["message"]
    _, found, _ = check(PERSONA, "llama3")
    assert "warning" not in found.get("LD113", [])


def test_ld114_notes_reasoning_the_qwen3_template_drops_from_history(check):
    code, found, report = check(MASKING / "think_history.jsonl", "qwen3")
    assert code == 0 and found == {"LD114": ["info"]}
    (f,) = report["findings"]
    assert f["evidence"]["lines"] == [1, 2, 3] and f["evidence"]["drops_reasoning"] is True
    _, found, _ = check(PERSONA, "qwen3")
    assert "LD114" not in found


def test_rules_that_need_user_code_are_skipped_without_dataset(check):
    _, _, report = check(PERSONA, "qwen3")
    status = {c["code"]: c["status"] for c in report["checks"]}
    for code in ("LD102", "LD103", "LD104", "LD106", "LD110"):
        assert status[code] == "skip"
    for code in ("LD101", "LD105", "LD107", "LD108", "LD109", "LD111", "LD112", "LD113",
                 "LD114"):
        assert status[code] == "pass"
