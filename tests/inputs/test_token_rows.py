"""Labels checked from the tokens alone: `check-dataset DATA --tokenized` and `batches=`.

Pre-tokenized rows (Axolotl's `preprocess` output, LLaMA-Factory's tokenized data, TRL's
processed dataset) and a trainer's collated batches hold `input_ids` and `labels` but no
conversation; the truth is recovered from each row's own tokens with the chat template's
structure (`masking/structure.py`). The rows are built at test time from conversations and the
real Qwen3 tokenizer (`fixtures/masking/token_rows.py`), since token ids depend on the
tokenizer; each rule gets a file of correct rows with one kind of mistake mixed in.
"""

from __future__ import annotations

import json
import re
import sys

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ..conftest import FIXTURES

pytestmark = pytest.mark.usefixtures('load_each_tokenizer_once')

MASKING = FIXTURES / "masking"
MULTITURN = MASKING / "multiturn.jsonl"


def _module(path):
    """A fixture module, imported as `check-dataset --dataset` imports user code."""
    from loradoctor.inputs.specs import load_spec
    return sys.modules[load_spec(f"{path}:write_jsonl").__module__]


@pytest.fixture(scope="module")
def rows_kit():
    return _module(MASKING / "token_rows.py")


def _conversations(path):
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        out.append(rec.get("messages") or rec.get("conversations"))
    return out


@pytest.fixture(scope="module")
def good_rows(rows_kit, qwen3_tokenizer):
    """8 multi-turn conversations (system turns, 2-3 replies each), labelled correctly."""
    return [rows_kit.correct(qwen3_tokenizer, c) for c in _conversations(MULTITURN)]


@pytest.fixture
def tokenized(cli, qwen3_tokenizer_dir, tmp_path, rows_kit):
    """Write rows to a JSON Lines file and run `check-dataset FILE --tokenized --json`."""
    def run(rows, raw_lines=None, tokenizer=qwen3_tokenizer_dir, name="rows.jsonl"):
        path = rows_kit.write_jsonl(tmp_path / name, rows, raw_lines)
        result = cli("check-dataset", path, "--tokenizer", tokenizer, "--tokenized", "--json")
        assert result.code in (0, 1), result.err
        data = json.loads(result.out)
        assert not [c for c in data["checks"] if c["status"] == "crash"], data["findings"]
        return result.code, data, path
    return run


def by_code(data) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in data["findings"]:
        out.setdefault(f["code"], []).append(f)
    return out


def summary_of(data, code: str) -> str:
    return next(c["summary"] for c in data["checks"] if c["code"] == code)


# --- correct rows ------------------------------------------------------------------------


def test_correctly_labelled_rows_pass_clean(tokenized, good_rows):
    code, data, _ = tokenized(good_rows)
    assert code == 0 and data["findings"] == []
    masking = data["summary"]["masking"]
    assert masking["samples"] == masking["samples_by_own_tokens"] == 8
    assert summary_of(data, "LD110") == "8 of 8 rows split into turns by the template's structure"
    assert summary_of(data, "LD114") == ("8 of 8 rows checked follow the tokenizer's own chat "
                                         "template")


def test_padded_rows_with_padding_masked_pass_clean_on_either_side(tokenized, good_rows,
                                                                  rows_kit, qwen3_tokenizer):
    pad = qwen3_tokenizer.pad_token_id
    longest = max(len(r["input_ids"]) for r in good_rows)
    rows = [rows_kit.padded(r, longest + 7, pad, side="right" if i % 2 else "left")
            for i, r in enumerate(good_rows)]
    rows += [rows_kit.padded(r, longest + 3, pad, attention=False) for r in good_rows[:2]]
    code, data, _ = tokenized(rows)
    assert code == 0 and data["findings"] == []


def test_a_json_list_of_rows_is_read_too(cli, qwen3_tokenizer_dir, tmp_path, good_rows):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(good_rows[:3]), encoding="utf-8")
    result = cli("check-dataset", path, "--tokenizer", qwen3_tokenizer_dir, "--tokenized",
                 "--json")
    assert result.code == 0 and json.loads(result.out)["findings"] == []


# --- one mistake each --------------------------------------------------------------------


def test_rows_that_supervise_the_prompt_are_ld103(tokenized, good_rows, rows_kit):
    rows = list(good_rows)
    rows[2] = rows_kit.prompt_supervised(rows[2])
    rows[5] = rows_kit.prompt_supervised(rows[5])
    code, data, path = tokenized(rows)
    found = by_code(data)
    assert code == 0 and set(found) == {"LD103"}  # a warning: the replies still train
    (ld103,) = found["LD103"]
    assert ld103["severity"] == "warning"
    assert ld103["evidence"]["lines"] == [3, 6] and ld103["location"] == f"{path}:3"
    assert ld103["message"].startswith("2 of 8 samples supervise prompt tokens (")
    tokens = ld103["evidence"]["tokens"]
    assert tokens["user"] > 0 and tokens["template"] > 0 and tokens["system"] > 0


def test_rows_with_every_label_masked_are_ld101(tokenized, good_rows, rows_kit):
    rows = list(good_rows)
    rows[0] = rows_kit.nothing_supervised(rows[0])
    rows[7] = rows_kit.nothing_supervised(rows[7])
    code, data, path = tokenized(rows)
    found = by_code(data)
    assert code == 1 and set(found) == {"LD101"}
    (ld101,) = found["LD101"]
    assert ld101["severity"] == "error" and ld101["evidence"]["lines"] == [1, 8]
    assert ld101["location"] == f"{path}:1"


def _trl_packed(rows, seq_length):
    """The rows as TRL's `SFTTrainer(packing=True)` holds its dataset: labels as TRL's assistant
    mask, packed by TRL's own `pack_dataset` (best fit), each row carrying `seq_lengths`."""
    datasets = pytest.importorskip("datasets")
    trl_data = pytest.importorskip("trl.data_utils")
    masked = [{"input_ids": r["input_ids"],
               "assistant_masks": [int(y != -100) for y in r["labels"]]} for r in rows]
    return trl_data.pack_dataset(datasets.Dataset.from_list(masked), seq_length=seq_length,
                                 strategy="bfd")


def _check_packed(cli, tokenizer_dir, packed, tmp_path, rows_kit):
    """check-dataset --tokenized --json on the packed rows as a save_to_disk folder and as
    JSON Lines: (path, exit code, report) of each."""
    folder = tmp_path / "packed"
    packed.save_to_disk(str(folder))
    jsonl = rows_kit.write_jsonl(tmp_path / "packed.jsonl", [dict(r) for r in packed])
    out = []
    for path in (folder, jsonl):
        result = cli("check-dataset", path, "--tokenizer", tokenizer_dir, "--tokenized",
                     "--json")
        assert result.code in (0, 1), result.err
        out.append((path, result.code, json.loads(result.out)))
    return out


def test_a_dataset_rows_samples_come_from_seq_lengths_or_positions_restarting_at_0():
    from loradoctor.inputs.rows import to_row, unpacked

    ids = list(range(10))

    def samples(**extra):
        row = to_row({"input_ids": ids, "labels": ids, **extra}, 4, "data.jsonl:4")
        return [(r.location, r.line, r.item.ids) for r in unpacked([row])]

    assert samples(seq_lengths=[4, 6]) == [("data.jsonl:4 sample 0", 4, ids[:4]),
                                           ("data.jsonl:4 sample 1", 4, ids[4:])]
    assert [s[2] for s in samples(position_ids=[0, 1, 2, 0, 1, 2, 3, 0, 1, 2])] == \
        [ids[:3], ids[3:7], ids[7:]]
    whole = [("data.jsonl:4", 4, ids)]
    assert samples(seq_lengths=[4, 5]) == whole  # lengths that do not add up to the row
    assert samples(position_ids=[1, 1, 1, 0, 1, 2, 3, 4, 5, 6]) == whole  # left padding
    assert samples(position_ids=list(range(10))) == whole


def test_trls_packed_rows_are_judged_sample_by_sample(cli, qwen3_tokenizer_dir, good_rows,
                                                      rows_kit, tmp_path):
    packed = _trl_packed(good_rows, seq_length=600)
    assert len(packed) < len(good_rows)  # several conversations share a row
    for _, code, data in _check_packed(cli, qwen3_tokenizer_dir, packed, tmp_path, rows_kit):
        assert code == 0 and data["findings"] == []  # not one info: each sample is the template's
        assert data["summary"]["masking"]["samples"] == 8
        assert summary_of(data, "LD114") == ("8 of 8 rows checked follow the tokenizer's own "
                                             "chat template")


def test_one_unsupervised_conversation_inside_a_packed_row_is_ld101_at_its_sample(
        cli, qwen3_tokenizer_dir, good_rows, rows_kit, tmp_path):
    rows = list(good_rows)
    rows[5] = rows_kit.nothing_supervised(rows[5])  # hidden in a row whose others supervise
    packed = _trl_packed(rows, seq_length=600)
    for path, code, data in _check_packed(cli, qwen3_tokenizer_dir, packed, tmp_path,
                                          rows_kit):
        found = by_code(data)
        assert code == 1 and set(found) == {"LD101"}, data["findings"]
        (ld101,) = found["LD101"]
        assert ld101["message"].startswith("1 of 8 samples have no supervised token")
        # The finding names the packed row's line; its token view, the sample inside it.
        line = ld101["evidence"]["lines"][0]
        assert ld101["location"] == f"{path}:{line}"
        text = cli("check-dataset", path, "--tokenizer", qwen3_tokenizer_dir, "--tokenized").out
        assert re.search(rf"{re.escape(str(path))}:{line} sample \d+\s+tokens 0-", text), text


def test_labels_shifted_by_hand_are_ld106(tokenized, good_rows, rows_kit):
    rows = [rows_kit.shifted_by_hand(r) for r in good_rows]
    code, data, _ = tokenized(rows)
    found = by_code(data)
    assert code == 1 and set(found) == {"LD106"}  # the shift undone, nothing else is wrong
    assert found["LD106"][0]["evidence"]["lines"] == list(range(1, 9))


def test_supervised_padding_is_ld103_whether_the_mask_or_the_pad_id_says_so(
        tokenized, good_rows, rows_kit, qwen3_tokenizer):
    pad = qwen3_tokenizer.pad_token_id
    longest = max(len(r["input_ids"]) for r in good_rows)
    rows = [rows_kit.padded(r, longest + 5, pad) for r in good_rows]
    rows[1] = rows_kit.padded(good_rows[1], longest + 5, pad, supervise_padding=True)
    rows[4] = rows_kit.padded(good_rows[4], longest + 5, pad, supervise_padding=True,
                              attention=False)  # pad ids in labels, no attention mask
    code, data, _ = tokenized(rows)
    found = by_code(data)
    assert set(found) == {"LD103"}
    (ld103,) = found["LD103"]
    n_pad = 2 * longest + 10 - len(good_rows[1]["input_ids"]) - len(good_rows[4]["input_ids"])
    assert ld103["message"] == f"2 samples supervise {n_pad} padding tokens: lines 2, 5"


def test_an_unsupervised_end_of_turn_token_is_ld105(tokenized, good_rows, rows_kit,
                                                    qwen3_tokenizer):
    im_end = qwen3_tokenizer.convert_tokens_to_ids("<|im_end|>")
    rows = list(good_rows)
    rows[3] = rows_kit.end_masked(rows[3], im_end)
    code, data, path = tokenized(rows)
    found = by_code(data)
    assert code == 1 and set(found) == {"LD105"}
    (ld105,) = found["LD105"]
    replies = sum(1 for t in good_rows[3]["input_ids"] if t == im_end) - \
        sum(1 for m in _conversations(MULTITURN)[3] if m["role"] != "assistant")
    assert ld105["evidence"]["lines"] == [4] and ld105["location"] == f"{path}:4"
    assert ld105["message"].startswith(f"{replies} of ")


def test_a_row_cut_inside_a_reply_is_an_ld107_warning(tokenized, good_rows, rows_kit):
    rows = list(good_rows)
    rows[6] = rows_kit.cut(rows[6], len(rows[6]["input_ids"]) - 8)  # the last reply's tail
    code, data, _ = tokenized(rows)
    found = by_code(data)
    assert code == 0 and set(found) == {"LD107"}
    (ld107,) = found["LD107"]
    assert ld107["severity"] == "warning" and ld107["evidence"]["lines"] == [7]
    assert "inside an assistant turn" in ld107["message"]


@pytest.mark.slow  # 1.5 to 4 s, measured in the day-to-day lane
def test_a_doubled_bos_is_ld109_and_only_ld109(tokenized, rows_kit, qwen3_tokenizer_dir,
                                               tmp_path, variants):
    """A Llama-3-style tokenizer: its template writes <|begin_of_text|> and tokenizer(text)
    adds another. The doubled BOS is one finding, not also a 'template variant' (LD114)."""
    from transformers import AutoTokenizer
    tok_dir = variants.llama3_style(qwen3_tokenizer_dir, tmp_path / "llama3")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    header = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    conversations = _conversations(MULTITURN)[:4]
    good = [rows_kit.correct(tok, c, header, "<|eot_id|>") for c in conversations]
    code, data, _ = tokenized(good, tokenizer=tok_dir, name="good.jsonl")
    assert code == 0 and {f["code"] for f in data["findings"]} <= {"LD113"}  # no pad token
    doubled = [rows_kit.correct(tok, c, header, "<|eot_id|>", add_special_tokens=True)
               for c in conversations]
    assert doubled[0]["input_ids"][:2] == [tok.bos_token_id] * 2
    code, data, _ = tokenized(doubled[:2] + good[2:], tokenizer=tok_dir, name="doubled.jsonl")
    found = by_code(data)
    assert set(found) - {"LD113"} == {"LD109"}
    assert found["LD109"][0]["evidence"]["lines"] == [1, 2]


def test_a_row_no_template_structure_explains_is_ld110(tokenized, good_rows, qwen3_tokenizer):
    plain = qwen3_tokenizer("Plain pretraining text, no chat turns at all.",
                            add_special_tokens=False).input_ids
    code, data, path = tokenized(good_rows + [{"input_ids": plain, "labels": list(plain)}])
    found = by_code(data)
    assert set(found) == {"LD110"}
    (ld110,) = found["LD110"]
    assert ld110["severity"] == "warning" and ld110["evidence"]["lines"] == [9]
    assert ld110["message"].startswith("1 of 9 rows hold no turn the chat template's "
                                       "structure explains")
    assert "'<|im_start|>assistant\\n'" in ld110["message"]


def test_broken_lines_are_ld100_with_their_line_and_the_rest_is_still_checked(
        tokenized, good_rows, rows_kit):
    rows = list(good_rows)
    rows[5] = rows_kit.nothing_supervised(rows[5])  # still found among the broken lines
    rows.insert(2, {"input_ids": rows[2]["input_ids"]})  # line 3: no labels
    code, data, path = tokenized(rows, raw_lines={5: '{"input_ids": [1, 2, 3], "labels": '})
    found = by_code(data)
    assert code == 1 and set(found) == {"LD100", "LD101"}
    ld100 = sorted(found["LD100"], key=lambda f: f["evidence"]["line"])
    assert [f["location"] for f in ld100] == [f"{path}:3", f"{path}:5"]
    assert "the row has no input_ids and labels" in ld100[0]["message"]
    assert ld100[1]["message"].startswith("not valid JSON")
    # rows[5] was written after the inserted row and the raw line: line 8
    assert found["LD101"][0]["evidence"]["lines"] == [8]
    assert summary_of(data, "LD100") == "8 of 10 rows hold input_ids and labels"


# --- a self-consistent variant of the template -------------------------------------------


@pytest.mark.parametrize("masks_only", [False, True], ids=["labels", "assistant_masks"])
def test_rows_from_trls_qwen3_training_template_are_a_variant_not_an_error(
        tokenized, rows_kit, qwen3_tokenizer, masks_only):
    """TRL keeps the empty <think> block on every assistant turn, and its generation block
    also supervises the '\\n' after <|im_end|>: no error, LD114 says which variant it is."""
    rows = [rows_kit.trl_training(qwen3_tokenizer, c, masks_only)
            for c in _conversations(MULTITURN)]
    code, data, path = tokenized(rows)
    found = by_code(data)
    assert code == 0 and not [f for f in data["findings"] if f["severity"] != "info"]
    (ld114,) = found["LD114"]
    assert ld114["severity"] == "info" and ld114["evidence"]["count"] == 8
    assert ld114["message"].startswith("8 of 8 rows follow a variant of the tokenizer's chat "
                                       "template")
    assert "<think>" in ld114["evidence"]["first"]  # where the variant parts from the template
    assert ld114["location"] == f"{path}:1"
    # The '\n' after <|im_end|> the generation block supervises: an info at most.
    assert all(f["severity"] == "info" for f in found.get("LD103", []))


def test_trl_training_rows_with_the_end_of_turn_masked_are_still_caught(
        tokenized, rows_kit, qwen3_tokenizer):
    im_end = qwen3_tokenizer.convert_tokens_to_ids("<|im_end|>")
    rows = [rows_kit.end_masked(rows_kit.trl_training(qwen3_tokenizer, c), im_end)
            for c in _conversations(MULTITURN)[:3]]
    code, data, _ = tokenized(rows)
    assert code == 1 and "LD105" in by_code(data)


# --- batches through the Python API ------------------------------------------------------


def _collate(rows, pad_id, pad_label=-100):
    """A right-padding collator: (B, T) tensors, padding labelled `pad_label`."""
    import torch
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), pad_label)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        labels[i, :n] = torch.tensor(r["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}  # (B, T) each


def test_batches_of_correct_rows_pass_clean(good_rows, qwen3_tokenizer):
    import loradoctor
    pad = qwen3_tokenizer.pad_token_id
    batches = [_collate(good_rows[:4], pad), _collate(good_rows[4:], pad)]
    report = loradoctor.check(tokenizer=qwen3_tokenizer, batches=batches)
    assert report.ok and report.findings == []
    assert report.summary["masking"]["samples_by_own_tokens"] == 8


def test_batches_name_the_row_across_batches_and_catch_a_collator_that_supervises_padding(
        good_rows, rows_kit, qwen3_tokenizer):
    import loradoctor
    pad = qwen3_tokenizer.pad_token_id
    im_end = qwen3_tokenizer.convert_tokens_to_ids("<|im_end|>")
    rows = list(good_rows)
    rows[5] = rows_kit.end_masked(rows[5], im_end)  # batch 1, row 1: the 6th row
    batches = [_collate(rows[:4], pad, pad_label=pad), _collate(rows[4:], pad)]
    report = loradoctor.check(tokenizer=qwen3_tokenizer, batches=iter(batches))
    codes = {f.code: f for f in report.findings}
    assert set(codes) == {"LD103", "LD105"} and not report.ok
    assert codes["LD105"].evidence["lines"] == [6] and codes["LD105"].location == "batch 1 row 1"
    width = max(len(r["input_ids"]) for r in rows[:4])
    padded_rows = [i + 1 for i, r in enumerate(rows[:4]) if len(r["input_ids"]) < width]
    assert padded_rows and "padding tokens" in codes["LD103"].message
    assert codes["LD103"].evidence["lines"] == padded_rows


# --- the structure oracle agrees with the record oracle ----------------------------------

texts = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="<|"),
            max_size=40),
    st.sampled_from(["", "\n", "\n\n", " ", "<think>\nplan\n</think>\n\nanswer", "</think>",
                     "<think>", "\nleading newline", "日本語のテキスト", "😀 emoji", "e\u0301"]),
)


@st.composite
def conversations(draw):
    """Any role order the Qwen3 template takes, at least one reply. Contents hold no template
    markup (`<|im_start|>`...): in a bare row such text is the template's own, by definition."""
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(texts)})
    for role in draw(st.lists(st.sampled_from(["user", "assistant", "user", "assistant",
                                               "system"]), min_size=1, max_size=5)):
        messages.append({"role": role, "content": draw(texts)})
    assume(any(m["role"] == "assistant" for m in messages))
    return messages


PROPERTY = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def oracles(qwen3_tokenizer):
    from loradoctor.masking.oracle import Oracle
    from loradoctor.masking.structure import StructureOracle
    oracle = Oracle(qwen3_tokenizer)
    return oracle, StructureOracle(oracle)


def _clean(row_item, oracles):
    """Compare one row with its own structure; the comparison's counts of every mistake."""
    from loradoctor.masking.compare import compare_rows
    from loradoctor.inputs.rows import Row
    c = compare_rows([Row(1, "row:1", row_item)], oracles[1], show=0)
    return (c.by_tokens, c.no_supervised.count, c.prompt_supervised.count,
            c.unsupervised_assistant.count, c.eot_unsupervised.count, c.shifted.count,
            c.cut_in_turn.count, c.unexplained.count, c.variant_rows.count)


@PROPERTY
@given(messages=conversations())
def test_the_structure_oracle_recovers_the_record_oracles_mask_from_the_tokens(oracles,
                                                                              messages):
    from loradoctor.masking.oracle import OracleSample
    from loradoctor.inputs.user_dataset import Item
    oracle, structure = oracles
    record = oracle.sample(messages)
    assert isinstance(record, OracleSample), record.error
    own = structure.sample(list(record.ids))
    assert isinstance(own, OracleSample), own.error
    assert own.mask() == record.mask()
    labels = [t if m else -100 for t, m in zip(record.ids, record.mask())]
    assert _clean(Item(list(record.ids), labels, None), oracles) == (1, 0, 0, 0, 0, 0, 0, 0, 0)


@PROPERTY
@given(messages=conversations())
def test_the_structure_oracle_finds_the_turns_of_rows_tokenized_turn_by_turn(oracles,
                                                                           messages):
    """Rows built by tokenizing each piece apart (prompt, reply, prompt, ...), as hand-written
    pipelines do: their ids are not the one-call tokenization, so the row's text is mapped back
    to its tokens piece by piece. The replies' tokens are still the ones supervised."""
    from loradoctor.masking.oracle import OracleSample
    oracle, structure = oracles
    record = oracle.sample(messages)
    assert isinstance(record, OracleSample), record.error
    text, cuts = record.truth.text, [0]
    for turn in record.truth.turns:
        cuts += [turn.start, turn.end]
    cuts.append(len(text))
    ids, truth = [], []
    for k in range(len(cuts) - 1):
        piece = text[cuts[k]:cuts[k + 1]]
        piece_ids = oracle.encode([piece])[0][0] if piece else []
        ids += piece_ids
        truth += [k % 2 == 1] * len(piece_ids)  # odd pieces are the replies
    own = structure.sample(ids)
    assert isinstance(own, OracleSample), own.error
    assert own.mask() == truth
