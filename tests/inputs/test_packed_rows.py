"""Packed batch rows split into their samples: transformers' `DataCollatorWithFlattening` and
TRL's padding-free collator (what `SFTTrainer(packing=True)` uses), on real Qwen3 token ids.

Each sample of a packed row becomes a row of its own (`batch 0 row 0 sample 2`) with its own
position ids, split where the position ids restart, or at `cu_seq_lens_q` when the batch holds
only those; the padding TRL adds up to `pad_to_multiple_of` is not a sample.
"""

from __future__ import annotations

import json

import pytest

from loradoctor.inputs.rows import batch_rows, sample_bounds

from ..conftest import DATA


@pytest.fixture(scope="module")
def samples(qwen3_tokenizer):
    records = [json.loads(line) for line in (DATA / "persona.jsonl").read_text().splitlines()
               if line.strip()][:3]
    rows = [{"input_ids": qwen3_tokenizer.apply_chat_template(r["conversations"])["input_ids"]}
            for r in records]
    return [{**r, "labels": list(r["input_ids"])} for r in rows]


def _split(batch):
    return [(row.location, row.item.ids, row.item.labels, row.positions)
            for row in batch_rows([batch])]


def test_a_flattened_batch_is_split_into_its_samples_at_the_position_restarts(samples):
    from transformers import DataCollatorWithFlattening
    got = _split(DataCollatorWithFlattening()(samples))
    assert [g[0] for g in got] == [f"batch 0 row 0 sample {k}" for k in range(3)]
    assert [g[1] for g in got] == [s["input_ids"] for s in samples]
    assert all(g[2][0] == -100 and g[2][1:] == s["labels"][1:] for g, s in zip(got, samples))
    assert all(g[3] == list(range(len(s["input_ids"]))) for g, s in zip(got, samples))


def test_without_position_ids_the_flash_attention_offsets_split_the_row(samples):
    from transformers import DataCollatorWithFlattening
    collator = DataCollatorWithFlattening(return_position_ids=False,
                                          return_flash_attn_kwargs=True)
    got = _split(collator(samples))
    assert [g[1] for g in got] == [s["input_ids"] for s in samples]
    assert all(g[3] is None for g in got)


def test_trl_padding_free_rows_are_split_and_their_padding_left_out(samples):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True,
                                               pad_to_multiple_of=64)
    batch = collator(samples)
    assert batch["input_ids"].shape[1] % 64 == 0
    got = _split(batch)
    assert [g[1] for g in got] == [s["input_ids"] for s in samples]


def test_an_unpacked_row_stays_one_row():
    assert sample_bounds([0, 1, 2, 3], 4) == [(0, 4)]
    assert sample_bounds(None, 4) == [(0, 4)]
    assert sample_bounds([0, 1, 0, 1, 2, 0, 0], 7) == [(0, 2), (2, 5)]
    rows = list(batch_rows([{"input_ids": [[5, 6, 7]], "labels": [[5, 6, 7]],
                             "position_ids": [[0, 1, 2]]}]))
    assert [r.location for r in rows] == ["batch 0 row 0"]
