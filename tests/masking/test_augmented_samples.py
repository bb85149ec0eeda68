"""Augmented samples are checked too: MiniMind-style data augmentation through the real CLI.

`fixtures/pipelines/minimind_augmented.py` adds a random system prompt to about 20% of the
conversations and drops the empty `<think>` block from about 80% of the rendered texts (seeded
per index), as MiniMind's SFT loader does. Most samples' ids then differ from the template's
rendering of their record (LD110 says so), and their labels are judged against the turns of
their own tokens: a masking bug must be caught on those samples as on the others, and correct
labels must pass. LD110's summary says how many samples were checked each way.

The same runs on MiniMind's own tokenizer (6,400 tokens, where `assistant` is three tokens)
and its template, which writes the empty think block into every reply and into its generation
prompt: the samples that lost the block are split into turns like the others.
"""

from __future__ import annotations

import json

import pytest

from ..conftest import DATA, MASKING, PIPELINES, ROOT

pytestmark = pytest.mark.usefixtures('load_each_tokenizer_once')

PERSONA = DATA / "persona.jsonl"
AUGMENTED = PIPELINES / "minimind_augmented.py"
FAMILIES = MASKING / "families.jsonl"  # 40 conversations, 10 with a system message
MINIMIND = ROOT / "fixtures" / "tokenizers" / "minimind"


@pytest.fixture(scope="module")
def rendered_as_is(qwen3_tokenizer) -> list[int]:
    """Lines (1-based) whose sample is exactly the template's rendering of the record,
    counted here independently of loradoctor: ids compared with apply_chat_template's."""
    from loradoctor.inputs.specs import load_spec
    dataset = load_spec(f"{AUGMENTED}:AugmentedSFT")(qwen3_tokenizer, str(PERSONA))
    lines = []
    for i, line in enumerate(PERSONA.read_text(encoding="utf-8").splitlines()):
        turns = json.loads(line)["conversations"]
        expected = qwen3_tokenizer.apply_chat_template(turns, tokenize=True)["input_ids"]
        ids = [t for t in dataset[i][0].tolist() if t != qwen3_tokenizer.pad_token_id]
        if ids == expected:
            lines.append(i + 1)
    return lines


def run(cli, tokenizer_dir, name):
    result = cli("check-dataset", PERSONA, "--tokenizer", tokenizer_dir,
                 "--dataset", f"{AUGMENTED}:{name}", "--json")
    data = json.loads(result.out)
    assert not [c for c in data["checks"] if c["status"] == "crash"], data["findings"]
    return result.code, data


def test_the_fixture_really_augments_most_samples(rendered_as_is, qwen3_tokenizer):
    from loradoctor.inputs.specs import load_spec
    dataset = load_spec(f"{AUGMENTED}:AugmentedSFT")(qwen3_tokenizer, str(PERSONA))
    texts = [qwen3_tokenizer.decode(dataset[i][0]) for i in range(len(dataset))]
    assert sum("<|im_start|>system" in t for t in texts) >= 2  # some got a system prompt
    assert sum("<think>" not in t for t in texts) >= 12  # most lost the empty think block
    assert 0 < len(rendered_as_is) < 12
    again = load_spec(f"{AUGMENTED}:AugmentedSFT")(qwen3_tokenizer, str(PERSONA))
    order = [5, 0, 17, 3]  # seeded per index: the same sample whatever the order of calls
    assert [again[i][0].tolist() for i in order] == [dataset[i][0].tolist() for i in order]


def test_correct_labels_on_augmented_samples_pass_and_every_sample_is_checked(
        cli, qwen3_tokenizer_dir, rendered_as_is):
    code, data = run(cli, qwen3_tokenizer_dir, "AugmentedSFT")
    found = {f["code"]: f for f in data["findings"]}
    assert code == 0 and set(found) == {"LD110"}  # the augmentation itself, a warning
    n_same, n_aug = len(rendered_as_is), 24 - len(rendered_as_is)
    ld110 = found["LD110"]
    assert ld110["severity"] == "warning" and ld110["evidence"]["count"] == n_aug
    assert set(ld110["evidence"]["lines"]) == set(range(1, 25)) - set(rendered_as_is)
    summary = next(c["summary"] for c in data["checks"] if c["code"] == "LD110")
    assert summary == (f"{n_same} of 24 samples match the template's ids; {n_aug} that differ "
                       f"had their labels checked against their own tokens' turns")
    masking = data["summary"]["masking"]
    assert masking["samples"] == masking["samples_compared"] == 24
    assert masking["samples_by_own_tokens"] == n_aug
    ld104 = next(c["summary"] for c in data["checks"] if c["code"] == "LD104")
    assert ld104.endswith("assistant tokens supervised in the 24 samples that supervise "
                          "anything")


def test_a_masking_bug_is_caught_on_the_augmented_samples_too(cli, qwen3_tokenizer_dir,
                                                             rendered_as_is):
    code, data = run(cli, qwen3_tokenizer_dir, "AugmentedSFTEndMasked")
    found = {f["code"]: f for f in data["findings"]}
    assert code == 1 and set(found) == {"LD105", "LD110"}
    ld105 = found["LD105"]
    # One reply per record: every sample's <|im_end|>, augmented or not, is counted.
    assert ld105["evidence"]["lines"] == list(range(1, 25))
    assert ld105["evidence"]["missing"] == ld105["evidence"]["total"] == 24
    assert ld105["message"].startswith("24 of 24 end-of-turn tokens ('<|im_end|>') are "
                                       "labelled -100 in 24 samples")
    augmented = set(range(1, 25)) - set(rendered_as_is)
    assert augmented <= set(ld105["evidence"]["lines"])


@pytest.fixture(scope="module")
def minimind_as_is() -> list[int]:
    """Lines whose MiniMind-tokenized sample is the template's rendering of the record, counted
    independently of loradoctor."""
    from transformers import AutoTokenizer

    from loradoctor.inputs.specs import load_spec
    tokenizer = AutoTokenizer.from_pretrained(MINIMIND)
    dataset = load_spec(f"{AUGMENTED}:AugmentedSFT")(tokenizer, str(FAMILIES), max_length=512)
    lines = []
    for i, line in enumerate(FAMILIES.read_text(encoding="utf-8").splitlines()):
        expected = tokenizer.apply_chat_template(json.loads(line)["messages"],
                                                 tokenize=True)["input_ids"]
        if [t for t in dataset[i][0].tolist() if t != tokenizer.pad_token_id] == expected:
            lines.append(i + 1)
    return lines


def run_minimind(cli, name):
    result = cli("check-dataset", FAMILIES, "--tokenizer", MINIMIND, "--dataset",
                 f"{AUGMENTED}:{name}", "--max-length", 512, "--json")
    data = json.loads(result.out)
    assert not [c for c in data["checks"] if c["status"] == "crash"], data["findings"]
    return result.code, data


def test_minimind_tokenizer_checks_every_augmented_sample_against_its_turns(cli, minimind_as_is):
    code, data = run_minimind(cli, "AugmentedSFT")
    found = {f["code"] for f in data["findings"] if f["severity"] != "info"}
    assert code == 0 and found == {"LD110"}  # no LD103: the think block it keeps is its choice
    n_same = len(minimind_as_is)
    assert 0 < n_same < 10
    summary = next(c["summary"] for c in data["checks"] if c["code"] == "LD110")
    assert summary == (f"{n_same} of 40 samples match the template's ids; {40 - n_same} that "
                       f"differ had their labels checked against their own tokens' turns")
    masking = data["summary"]["masking"]
    assert masking["samples_compared"] == 40 and masking["samples_by_own_tokens"] == 40 - n_same


def test_minimind_tokenizer_catches_a_masking_bug_on_every_augmented_sample(cli):
    code, data = run_minimind(cli, "AugmentedSFTEndMasked")
    ld105 = next(f for f in data["findings"] if f["code"] == "LD105")
    assert code == 1 and ld105["evidence"]["lines"] == list(range(1, 41))
    assert ld105["evidence"]["missing"] == ld105["evidence"]["total"] == 60
