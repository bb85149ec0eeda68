"""The pieces of the masking checker: label shifts, item shapes, marker source, bounded stats."""

from __future__ import annotations

import pytest
import torch

from loradoctor.errors import InputError
from loradoctor.masking import scan as scan_module
from loradoctor.masking.alignment import effective_labels
from loradoctor.masking.markers import none_builders
from loradoctor.masking.oracle import Oracle
from loradoctor.masking.scan import DataStats, Lines, scan
from loradoctor.inputs.user_dataset import Item, to_item
from loradoctor.inputs.records import read_records

from ..conftest import DATA

IDS = [10, 11, 12, 13, 14]


def test_aligned_labels_are_taken_as_they_are():
    ids, mask, shifted = effective_labels(Item(IDS, [-100, -100, 12, 13, -100]))
    assert (ids, mask, shifted) == (IDS, [False, False, True, True, False], False)


def test_labels_shifted_by_one_are_recognised_and_mapped_back_to_input_positions():
    ids, mask, shifted = effective_labels(Item(IDS, [-100, 12, 13, 14, -100]))
    assert shifted and mask == [False, False, True, True, True] and ids == IDS
    # labels = input_ids[1:] (MiniMind's X, Y layout): one shorter
    ids, mask, shifted = effective_labels(Item(IDS[:-1], [-100, 12, 13, 14]))
    assert shifted and ids == IDS and mask == [False, False, True, True, True]


def test_items_come_as_tuples_dicts_tensors_or_a_batch_of_one():
    t = torch.tensor([IDS])
    assert to_item((t, t.clone()), "x").ids == IDS
    item = to_item({"input_ids": IDS, "labels": IDS, "attention_mask": [1, 1, 1, 0, 0]}, "x")
    assert item.attention == [1, 1, 1, 0, 0]
    # MiniMind's (X, Y, loss_mask): the mask says which labels count
    item = to_item((IDS, IDS, torch.tensor([0, 0, 1, 1, 0])), "x")
    assert item.labels == [-100, -100, 12, 13, -100]


@pytest.mark.parametrize("raw,needle", [
    ([1, 2, 3], "returned list"),
    ({"input_ids": IDS}, "without input_ids and labels"),
    ((IDS, [[1.5, 2.0]]), "labels as list"),
    ((IDS, "labels"), "labels as str"),
])
def test_items_loradoctor_cannot_read_are_input_errors(raw, needle):
    with pytest.raises(InputError, match="ds\\[3\\]"):
        try:
            to_item(raw, "ds[3]")
        except InputError as exc:
            assert needle in str(exc)
            raise


def _fstring(tokenizer):
    return tokenizer(f"{tokenizer.bos_token}assistant\n").input_ids


def _format(tokenizer):
    return "{}assistant\n".format(tokenizer.bos_token)


def _percent(tokenizer):
    return "%sassistant\n" % tokenizer.bos_token


def _str_plus(tokenizer):
    return str(tokenizer.bos_token) + "assistant\n"


def _eos_only(tokenizer):
    return f"{tokenizer.eos_token}"


@pytest.mark.parametrize("fn", [_fstring, _format, _percent, _str_plus])
def test_source_that_formats_a_none_bos_token_is_found_with_its_line(fn, qwen3_tokenizer):
    (hit,) = none_builders(fn, None, qwen3_tokenizer)
    assert hit.attribute == "bos_token" and hit.location.startswith("test_masking_units.py:")
    assert "bos_token" in hit.snippet


def test_source_that_formats_a_token_the_tokenizer_has_is_not_flagged(qwen3_tokenizer,
                                                                       smollm2_tokenizer):
    assert none_builders(_eos_only, None, qwen3_tokenizer) == []
    assert none_builders(_fstring, None, smollm2_tokenizer) == []  # its bos is <|im_start|>


def test_line_lists_keep_exact_counts_but_bounded_line_numbers(monkeypatch):
    monkeypatch.setattr(scan_module, "MAX_LINES", 5)
    a, b = Lines(), Lines()
    for n in range(1, 9):
        a.add(n)
    for n in range(100, 104):
        b.add(n)
    a.merge(b)
    assert a.count == 12 and a.lines == [1, 2, 3, 4, 5]


def test_the_scan_streams_records_and_keeps_statistics_bounded(qwen3_tokenizer, tmp_path,
                                                               monkeypatch):
    monkeypatch.setattr(scan_module, "MAX_LINES", 10)
    monkeypatch.setattr(scan_module, "CHUNK", 64)
    data = tmp_path / "d.jsonl"
    data.write_text("".join('{"messages": [{"role": "user", "content": "q%d"}]}\n' % i
                            for i in range(500)))
    seen = []
    stats = scan(Oracle(qwen3_tokenizer), read_records(data), advance=seen.append)
    assert stats.no_assistant.count == 500 and len(stats.no_assistant.lines) == 10
    assert sum(seen) == 500 and max(seen) <= 64  # chunked, one batched call per chunk
    assert isinstance(stats, DataStats) and stats.rendered == 500


def test_the_scan_reports_length_percentiles(qwen3_tokenizer):
    stats = scan(Oracle(qwen3_tokenizer), read_records(DATA / "persona.jsonl"))
    assert stats.rendered == 24 and 0 < stats.percentile(0.5) <= stats.percentile(0.95)
    assert stats.percentile(0.95) <= stats.longest
