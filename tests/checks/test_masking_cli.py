"""check-dataset end to end: the MiniMind-style dataset with the real Qwen3 and SmolLM2
tokenizers, the token view, input errors, and --workers."""

from __future__ import annotations

import json
import random

import pytest

from ..conftest import DATA, FIXTURES, PIPELINES

pytestmark = pytest.mark.usefixtures('load_each_tokenizer_once')

PERSONA = DATA / "persona.jsonl"
MINIMIND = PIPELINES / "minimind_dataset.py"
BAD_SPECS = FIXTURES / "masking" / "bad_specs.py"


def findings(result) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in json.loads(result.out)["findings"]:
        out.setdefault(f["code"], []).append(f)
    return out


def test_qwen3s_missing_bos_makes_the_minimind_dataset_fail_with_ld101_and_ld102(
        cli, qwen3_tokenizer_dir):
    result = cli("check-dataset", PERSONA, "--tokenizer", qwen3_tokenizer_dir,
                 "--dataset", f"{MINIMIND}:LoRADataset", "--json")
    assert result.code == 1, result.err
    found = findings(result)  # stdout is exactly one JSON object
    assert set(found) == {"LD101", "LD102"}
    (ld101,) = found["LD101"]
    assert ld101["severity"] == "error" and ld101["evidence"]["count"] == 24
    assert ld101["evidence"]["lines"] == list(range(1, 25))
    (ld102,) = found["LD102"]
    assert ld102["severity"] == "error"
    assert ld102["evidence"]["attribute"] == "bos_token"
    assert ld102["evidence"]["marker"] == "Noneassistant\n"
    assert ld102["evidence"]["template_marker"] == "<|im_start|>assistant\n"
    assert ld102["location"].startswith("minimind_dataset.py:")
    assert "<|im_start|>assistant\\n" in ld102["fix"]


def test_the_fixed_minimind_dataset_passes_with_qwen3(cli, qwen3_tokenizer_dir):
    result = cli("check-dataset", PERSONA, "--tokenizer", qwen3_tokenizer_dir,
                 "--dataset", f"{MINIMIND}:LoRADatasetFixed", "--json")
    assert result.code == 0 and findings(result) == {}
    summary = json.loads(result.out)["summary"]["masking"]
    assert summary["samples"] == summary["samples_compared"] == 24
    assert summary["samples_without_labels"] == 0


def test_smollm2s_im_start_bos_means_the_same_class_is_not_accused(cli, smollm2_dir):
    result = cli("check-dataset", PERSONA, "--tokenizer", smollm2_dir,
                 "--dataset", f"{MINIMIND}:LoRADataset", "--json")
    assert result.code == 0, result.out
    assert not {"LD101", "LD102"} & set(findings(result))


def test_failing_samples_get_a_token_view_with_their_line(cli, qwen3_tokenizer_dir):
    args = ["check-dataset", PERSONA, "--tokenizer", qwen3_tokenizer_dir,
            "--dataset", f"{MINIMIND}:LoRADataset"]
    out = cli(*args).out
    assert out.count("tokens 0-") == 3  # --show defaults to a few
    assert "persona.jsonl:1  tokens 0-30 of 30" in out
    assert "should be trained, is masked" in out and "<|im_end|>" in out
    assert cli(*args, "--show", "1").out.count("tokens 0-") == 1
    assert "tokens 0-" not in cli(*args, "--show", "0").out


@pytest.mark.parametrize("name,needle", [
    ("RaisingDataset", "RaisingDataset(tokenizer, path) raised ValueError: "
                       "expected a 'text' field in every record (at "),
    ("NeedsSplit", "NeedsSplit needs a 'split' argument"),
    ("IdsOnly", "ds[0] ("),
    ("crashes_on_a_record", "raised KeyError"),
])
def test_user_code_that_cannot_be_used_is_an_input_error_with_its_place(cli, qwen3_tokenizer_dir,
                                                                       name, needle):
    data = DATA / "chat_messages.jsonl"
    result = cli("check-dataset", data, "--tokenizer", qwen3_tokenizer_dir,
                 "--dataset", f"{BAD_SPECS}:{name}")
    assert result.code == 2
    assert result.out == "" and len(result.err.strip().splitlines()) == 1
    assert needle in result.err
    if name == "IdsOnly":
        assert "without input_ids and labels" in result.err
    if name == "crashes_on_a_record":
        assert "chat_messages.jsonl:1" in result.err


def write_many(path, n: int, seed: int = 3) -> None:
    rng = random.Random(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    with path.open("w") as fh:
        for i in range(n):
            turns = [{"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(2, 40)))}]
            if i % 97:  # every 97th record has no reply
                turns.append({"role": "assistant",
                              "content": " ".join(rng.choices(words, k=rng.randint(2, 40)))})
            fh.write(json.dumps({"messages": turns}) + "\n")


def test_several_workers_give_the_same_report_as_one(cli, qwen3_tokenizer_dir, tmp_path):
    data = tmp_path / "many.jsonl"
    write_many(data, 900)
    reports = []
    for workers in ("1", "2"):
        result = cli("check-dataset", data, "--tokenizer", qwen3_tokenizer_dir, "--json",
                     "--max-length", "48", "--workers", workers)
        assert result.code == 1
        report = json.loads(result.out)
        reports.append((report["findings"], report["summary"]["masking"]))
    assert reports[0] == reports[1]
    found = {f["code"]: f for f in reports[0][0]}
    assert found["LD101"]["evidence"]["lines"] == list(range(1, 901, 97))
    assert found["LD107"]["evidence"]["count"] > 0
