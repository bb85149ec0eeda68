"""LD118-LD120 on their bad and good fixtures: the collator against the dataset's labels
(`check-dataset --collator`, through the real CLI), packed batches judged sample by sample, and
cross-sample attention measured on the cached tiny Qwen3 (`loradoctor.check(batches=...)`).

Fixtures live in fixtures/masking/ (`ld118.py`: a dataset that masks the prompt and pads to a
fixed length, and two collators; `ld119.py`, `ld120.py`: packing collators); collators and
tokenizers are the real transformers and Qwen3/SmolLM2 ones.
"""

from __future__ import annotations

import json

import pytest

import loradoctor

from ..conftest import DATA, MASKING

pytestmark = pytest.mark.usefixtures('load_each_tokenizer_once')

PERSONA = DATA / "persona.jsonl"
LD118 = MASKING / "ld118.py"


@pytest.fixture
def check(cli, tokenizers):
    """`check-dataset PERSONA --dataset ld118.py:PaddedChats --json ...`: (exit code,
    {code: [severities]}, report)."""
    def run(tokenizer, *extra):
        result = cli("check-dataset", PERSONA, "--tokenizer", tokenizers[tokenizer], "--json",
                     "--dataset", f"{LD118}:PaddedChats", *extra)
        assert result.code in (0, 1), result.err
        report = json.loads(result.out)
        found: dict[str, list[str]] = {}
        for f in report["findings"]:
            found.setdefault(f["code"], []).append(f["severity"])
        assert "LD001" not in found, [f["message"] for f in report["findings"]]
        return result.code, found, report
    return run


def _finding(report, code):
    return next(f for f in report["findings"] if f["code"] == code)


@pytest.mark.slow  # two check-dataset runs with collators
def test_ld118_flags_a_collator_that_rebuilds_the_labels_and_passes_one_that_pads_them(check):
    code, found, report = check("qwen3", "--collator", f"{LD118}:RebuildLabels")
    assert code == 1 and found == {"LD118": ["error"]}
    f = _finding(report, "LD118")
    assert f["evidence"]["collator"] == "RebuildLabels" and f["evidence"]["count"] == 24
    assert f["evidence"]["prompt_trained"] > 0 and f["evidence"]["reply_masked"] == 0
    assert f["location"] == f"{PERSONA}:1" and "DataCollatorForSeq2Seq" in f["fix"]
    code, found, report = check("qwen3", "--collator", f"{LD118}:PadLabels")
    assert code == 0 and not found
    checks = {c["code"]: c["status"] for c in report["checks"]}
    assert checks["LD118"] == "pass"


def test_ld118_with_the_library_class_and_its_arguments(check):
    code, found, report = check("smollm2", "--collator",
                                "transformers:DataCollatorForLanguageModeling",
                                "--collator-arg", "mlm=False")
    assert code == 1 and "error" in found["LD118"]
    evidence = _finding(report, "LD118")["evidence"]
    # SmolLM2 pads with its end-of-turn token: masking padding by id masks every <|im_end|>.
    assert evidence["eot_masked"] == 24 and evidence["prompt_trained"] > 0


@pytest.mark.slow  # 1.5 to 4 s, measured in the day-to-day lane
def test_a_collator_class_that_cannot_be_built_is_an_input_error(cli, qwen3_tokenizer_dir):
    result = cli("check-dataset", PERSONA, "--tokenizer", qwen3_tokenizer_dir,
                 "--dataset", f"{LD118}:PaddedChats",
                 "--collator", "transformers:DataCollatorForLanguageModeling")
    assert result.code == 2
    assert "mlm=False" in result.err and "--collator-arg" in result.err


def test_ld118_skips_without_a_collator_or_without_items(check, cli, qwen3_tokenizer_dir):
    _, _, report = check("qwen3")
    skipped = {c["code"] for c in report["checks"] if c["status"] == "skip"}
    assert {"LD118", "LD119", "LD120"} <= skipped
    result = cli("check-dataset", PERSONA, "--tokenizer", qwen3_tokenizer_dir, "--json",
                 "--collator", f"{LD118}:PadLabels")
    assert result.code == 0, result.err
    assert "LD118" in {c["code"] for c in json.loads(result.out)["checks"]
                       if c["status"] == "skip"}


def test_ld118_on_token_rows_and_through_the_api(qwen3_tokenizer, tmp_path):
    from transformers import DataCollatorForLanguageModeling

    from loradoctor.inputs.specs import load_spec
    padded = load_spec(f"{LD118}:PaddedChats")(qwen3_tokenizer, str(PERSONA))
    rows = [padded[i] for i in range(6)]
    collator = DataCollatorForLanguageModeling(qwen3_tokenizer, mlm=False)
    report = loradoctor.check(tokenizer=qwen3_tokenizer, data=rows, tokenized=True,
                              collator=collator)
    assert [f.code for f in report.errors] == ["LD118"]
    assert report.errors[0].location == "list[0]"
    report = loradoctor.check(tokenizer=qwen3_tokenizer, dataset=padded, collator=collator)
    assert [f.code for f in report.errors] == ["LD118"]


def _rows(tokenizer, n=4):
    records = [json.loads(line) for line in PERSONA.read_text().splitlines() if line.strip()]
    rows = [{"input_ids": tokenizer.apply_chat_template(r["conversations"])["input_ids"]}
            for r in records[:n]]
    return [{**r, "labels": list(r["input_ids"])} for r in rows]  # the whole conversation


def _collator(name):
    from loradoctor.inputs.specs import load_spec
    return load_spec(f"{MASKING / name}")


def test_ld119_flags_packed_labels_scored_across_samples(qwen3_tokenizer):
    rows = _rows(qwen3_tokenizer)
    report = loradoctor.check(tokenizer=qwen3_tokenizer,
                              batches=[_collator("ld119.py:bad")(rows)])
    f = next(f for f in report.findings if f.code == "LD119")
    assert f.severity.value == "warning" and f.evidence["count"] == 3
    assert f.location == "batch 0 row 0 sample 1"
    report = loradoctor.check(tokenizer=qwen3_tokenizer,
                              batches=[_collator("ld119.py:good")(rows)])
    assert "LD119" not in {f.code for f in report.findings}
    # Each sample is judged as a row of its own: four conversations, not one.
    assert report.summary["masking"]["samples"] == 4


@pytest.fixture(scope="module")
def tiny_qwen3(tiny_qwen3_dir):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir)


@pytest.mark.parametrize("collator,use_cache,leaks,fix", [
    ("ld120.py:bad", False, True, "drop the attention_mask"),
    ("ld120.py:good", True, True, "use_cache=False"),  # a plain loop with the config's cache
    ("ld120.py:good", False, False, None),  # as the Trainer calls it
])
def test_ld120_measures_whether_attention_keeps_packed_samples_apart(
        qwen3_tokenizer, tiny_qwen3, collator, use_cache, leaks, fix, monkeypatch):
    monkeypatch.setattr(tiny_qwen3.config, "use_cache", use_cache)
    batch = _collator(collator)(_rows(qwen3_tokenizer))
    report = loradoctor.check(model=tiny_qwen3, tokenizer=qwen3_tokenizer, batches=[batch],
                              command="check-dataset", select="LD12")
    status = {r.code: r.status.value for r in report.results}
    assert status["LD120"] == ("fail" if leaks else "pass"), report.results
    if leaks:
        f = report.errors[0]
        assert f.code == "LD120" and fix in f.fix
        assert f.evidence["use_cache"] is use_cache
        drifts = {s["location"]: s["max_abs_diff"] for s in f.evidence["samples"]}
        assert drifts["batch 0 row 0 sample 3"] > 10 * f.evidence["floor"]


def test_ld120_skips_without_the_model(qwen3_tokenizer):
    batch = _collator("ld120.py:bad")(_rows(qwen3_tokenizer))
    report = loradoctor.check(tokenizer=qwen3_tokenizer, batches=[batch], select="LD12")
    result = next(r for r in report.results if r.code == "LD120")
    assert result.status.value == "skip" and "needs the model" in result.summary
