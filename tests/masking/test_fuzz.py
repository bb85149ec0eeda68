"""`check-dataset --fuzz N`: generated conversations through the user's dataset code.

The fixtures in fixtures/fuzz/ label every record of chats.jsonl right and some inputs wrong:
a reply that starts with a newline (the marker search), an empty reply (a text search that
raises), a reply longer than --max-length (truncation), special-token text in content (a markup
search). Without --fuzz each passes; with it each fails with a shrunk record, and that record
pasted into a data file makes the plain check fail the same way. `correct.py` (the template's
own generation mask) survives --fuzz 500. All through the real CLI and the real Qwen3 tokenizer.
"""

from __future__ import annotations

import json
import os
import tempfile

import pytest

from ..conftest import FIXTURES

pytestmark = pytest.mark.usefixtures('load_each_tokenizer_once')

FUZZ = FIXTURES / "fuzz"
CHATS = FUZZ / "chats.jsonl"

# (dataset SPEC in fixtures/fuzz, --fuzz N, extra arguments, the rules its fuzz failures break)
CASES = [
    ("in_context.py:HeaderSearch", 40, (), {"LD104", "LD111"}),
    ("empty_reply.py:find_replies", 20, (), {"LD115"}),
    ("long_reply.py:Truncating", 40, ("--max-length", "128"), {"LD107"}),
    ("special_text.py:by_markup", 40, (), {"LD103", "LD105"}),
]


@pytest.fixture
def check(cli, qwen3_tokenizer_dir):
    """`check-dataset --json` on the Qwen3 tokenizer: (exit code, report)."""
    def run(data, spec, *extra):
        result = cli("check-dataset", data, "--tokenizer", qwen3_tokenizer_dir, "--dataset",
                     f"{FUZZ / spec}", "--json", *extra)
        assert result.code in (0, 1, 2), result.err
        return result.code, (json.loads(result.out) if result.code != 2 else result.err)
    return run


def fuzz_findings(report) -> list[dict]:
    return [f for f in report["findings"] if f["location"] and f["location"].startswith("--fuzz")]


@pytest.mark.slow  # a fuzz search over generated conversations
@pytest.mark.parametrize("spec,n,extra,codes", CASES, ids=[c[0].split(":")[0] for c in CASES])
def test_fuzz_finds_what_the_fixture_file_hides_and_the_shrunk_record_reproduces_it(
        check, tmp_path, spec, n, extra, codes):
    code, report = check(CHATS, spec, *extra)
    assert code == 0 and not report["findings"], report["findings"]

    code, report = check(CHATS, spec, "--fuzz", str(n), *extra)
    found = fuzz_findings(report)
    assert found and {f["code"] for f in found} <= codes | {"LD101", "LD103", "LD104", "LD105",
                                                             "LD111"}
    assert {f["code"] for f in found} & codes
    ld115 = next(c for c in report["checks"] if c["code"] == "LD115")
    assert f"of {n} generated conversations judged (seed 0)" in ld115["summary"]
    first = next(f for f in found if f["code"] in codes)
    assert code == (1 if any(f["severity"] == "error" for f in report["findings"]) else 0)
    record = json.loads(first["evidence"]["jsonl"])
    assert record == first["evidence"]["record"] and first["evidence"]["jsonl"] in first["message"]
    assert list(record) == ["messages"]  # the data file's own record shape
    assert record["messages"][-1]["role"] == "assistant"

    pasted = tmp_path / "pasted.jsonl"
    pasted.write_text(first["evidence"]["jsonl"] + "\n", encoding="utf-8")
    code, again = check(pasted, spec, *extra)
    if first["code"] == "LD115":  # a record of the file that the code raises on is exit 2
        assert code == 2 and "raised" in again and first["evidence"]["error"].split(": ")[-1] \
            .split(" (at")[0] in again
    else:
        assert first["code"] in {f["code"] for f in again["findings"]}, again["findings"]


@pytest.mark.slow  # a fuzz search over generated conversations
def test_fuzz_shrinks_to_the_smallest_conversation(check):
    _, report = check(CHATS, "empty_reply.py:find_replies", "--fuzz", "20")
    (ld115,) = [f for f in report["findings"] if f["code"] == "LD115"]
    assert ld115["evidence"]["record"] == {"messages": [{"role": "user", "content": ""},
                                                        {"role": "assistant", "content": ""}]}
    assert "ValueError" in ld115["message"] and "empty_reply.py:" in ld115["message"]

    _, report = check(CHATS, "in_context.py:HeaderSearch", "--fuzz", "40")
    ld111 = next(f for f in report["findings"] if f["code"] == "LD111")
    replies = [m["content"] for m in ld111["evidence"]["record"]["messages"]
               if m["role"] == "assistant"]
    assert replies[0] == "\n" and ld111["evidence"]["turns"] == 4


@pytest.mark.slow  # a fuzz search over generated conversations
def test_a_correct_labelling_function_survives_500_generated_conversations(check):
    code, report = check(CHATS, "correct.py:generation_mask", "--fuzz", "500")
    assert code == 0 and not report["findings"], report["findings"]
    ld115 = next(c for c in report["checks"] if c["code"] == "LD115")
    assert ld115["status"] == "pass"
    assert ld115["summary"].startswith("500 of 500 generated conversations judged")


@pytest.mark.slow  # three fuzz searches
def test_the_same_seed_finds_the_same_records_and_another_seed_searches_elsewhere(check):
    def records(seed):
        _, report = check(CHATS, "special_text.py:by_markup", "--fuzz", "60", "--seed", seed)
        return [(f["code"], f["evidence"]["jsonl"], f["evidence"]["found_after"])
                for f in fuzz_findings(report)]

    first = records("7")
    assert first and records("7") == first
    assert records("8") != first


@pytest.mark.slow  # a fuzz search over generated conversations
@pytest.mark.usefixtures("private_tempdir")
def test_fuzz_writes_nothing_in_the_working_directory_and_cleans_its_temporary_files(
        check, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("loradoctor-fuzz-")}
    check(CHATS, "in_context.py:HeaderSearch", "--fuzz", "40")
    assert os.listdir(tmp_path) == []  # no .hypothesis/ folder, no example database
    after = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("loradoctor-fuzz-")}
    assert after == before


def test_a_class_reads_generated_records_from_a_temporary_file_outside_the_project(check):
    from loradoctor.inputs.specs import load_spec

    code, report = check(CHATS, "paths.py:RecordsPath", "--fuzz", "5")
    assert code == 0, report
    seen = load_spec(f"{FUZZ / 'paths.py'}:RecordsPath").seen
    generated = [p for p in seen if p != str(CHATS)]
    assert len(generated) >= 5
    for path in generated:
        assert path.startswith(tempfile.gettempdir()) and path.endswith(".jsonl")
        assert not path.startswith(str(FIXTURES.parent))


def test_fuzz_without_a_dataset_or_with_a_negative_count_is_a_usage_error(cli,
                                                                          qwen3_tokenizer_dir):
    result = cli("check-dataset", CHATS, "--tokenizer", qwen3_tokenizer_dir, "--fuzz", "10")
    assert result.code == 2 and "--fuzz" in result.err and "--dataset" in result.err
    assert len(result.err.strip().splitlines()) == 1
    result = cli("check-dataset", CHATS, "--tokenizer", qwen3_tokenizer_dir, "--dataset",
                 f"{FUZZ / 'correct.py'}:generation_mask", "--fuzz", "-3")
    assert result.code == 2 and "--fuzz -3" in result.err


@pytest.mark.slow  # a fuzz search over generated conversations
def test_fuzz_failures_show_in_the_doctor_view_with_a_token_view(cli, qwen3_tokenizer_dir):
    result = cli("check-dataset", CHATS, "--tokenizer", qwen3_tokenizer_dir, "--dataset",
                 f"{FUZZ / 'in_context.py'}:HeaderSearch", "--fuzz", "40")
    assert result.code == 1, result.err  # LD105 (an error) is among what it finds
    out = result.out
    assert "! LD104 assistant-tokens-unsupervised" in out
    assert "--fuzz: 1 generated conversation breaks it" in out
    assert '{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": ' \
           '"\\n"}' in out.replace("\n             ", " ")
    assert "a generated conversation  tokens 0-" in out and "legend:" in out
