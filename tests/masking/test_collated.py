"""The dataset's labels against the collator's (`masking/collated.py`), with real collators.

Items are built from real conversations and the real Qwen3 and SmolLM2 tokenizers
(`fixtures/masking/ld118.py`: the prompt masked with -100, every item padded to a fixed
length). transformers' `DataCollatorForLanguageModeling(mlm=False)` rebuilds the labels from
`input_ids`; `DataCollatorForSeq2Seq` pads the labels it is given (on either side);
`DataCollatorWithFlattening` packs the items into one row; a collator that shifts the labels by
hand is recorded as a shift (LD106 names it), not as a change of mask.
"""

from __future__ import annotations

import pytest

from loradoctor.inputs.user_collator import UserCollator
from loradoctor.masking.collated import compare_collated, find_offset

from ..conftest import DATA, MASKING


@pytest.fixture(scope="module")
def kit():
    from loradoctor.inputs.specs import load_spec
    return load_spec(f"{MASKING / 'ld118.py'}:PaddedChats")


def _items(dataset_class, tokenizer, n=8, **kwargs):
    ds = dataset_class(tokenizer, str(DATA / "persona.jsonl"), **kwargs)
    return [(i + 1, f"ds[{i}]", ds[i]) for i in range(n)]


def _compare(collator, items, tokenizer):
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return compare_collated(UserCollator(collator, None, tokenizer), items, tokenizer, eot)


def test_a_collator_that_rebuilds_labels_trains_the_masked_prompt(kit, qwen3_tokenizer):
    from transformers import DataCollatorForLanguageModeling
    items = _items(kit, qwen3_tokenizer)
    got = _compare(DataCollatorForLanguageModeling(qwen3_tokenizer, mlm=False), items,
                   qwen3_tokenizer)
    assert got.collator == "DataCollatorForLanguageModeling"
    assert got.compared == got.changed.count == 8 and got.changed.lines == list(range(1, 9))
    assert got.prompt_trained > 0 and got.masked == 0 and got.padding_trained == 0
    assert got.view is not None and got.view.oracle is not None


def test_with_pad_as_end_of_turn_it_also_masks_every_end_of_turn_token(kit, smollm2_tokenizer):
    from transformers import DataCollatorForLanguageModeling
    tok = smollm2_tokenizer
    assert tok.pad_token == "<|im_end|>"
    got = _compare(DataCollatorForLanguageModeling(tok, mlm=False), _items(kit, tok), tok)
    assert got.eot_masked == 8 and got.reply_masked == 0 and got.prompt_trained > 0


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_collator_that_pads_the_labels_keeps_them(kit, qwen3_tokenizer, side):
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq
    tok = AutoTokenizer.from_pretrained(qwen3_tokenizer.name_or_path, padding_side=side)
    unpadded = [(line, where, {k: v[:sum(item["attention_mask"])] for k, v in item.items()})
                for line, where, item in _items(kit, tok)]
    got = _compare(DataCollatorForSeq2Seq(tok), unpadded, tok)
    assert got.compared == 8 and not got.changed and not got.unpaired


def test_a_flattening_collator_is_read_end_to_end(kit, qwen3_tokenizer):
    from transformers import DataCollatorWithFlattening
    unpadded = [(line, where, {k: v[:sum(item["attention_mask"])] for k, v in item.items()
                               if k != "attention_mask"})
                for line, where, item in _items(kit, qwen3_tokenizer)]
    got = _compare(DataCollatorWithFlattening(), unpadded, qwen3_tokenizer)
    assert got.compared == 8 and not got.changed and not got.unpaired


def test_a_collator_that_shifts_labels_is_a_shift_not_a_change_of_mask(kit, qwen3_tokenizer):
    import torch
    from transformers import DataCollatorForSeq2Seq
    pad = DataCollatorForSeq2Seq(qwen3_tokenizer)

    def shifted(features):
        batch = pad(features)
        labels = batch["labels"]
        batch["labels"] = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], 1)
        return batch
    got = _compare(shifted, _items(kit, qwen3_tokenizer), qwen3_tokenizer)
    assert got.shifted.count == 8 and not got.changed


def test_items_whose_labels_trl_makes_from_a_mask_are_only_counted(qwen3_tokenizer):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
    items = [(1, "ds[0]", {"input_ids": [1, 2, 3, 4], "assistant_masks": [0, 0, 1, 1]})]
    got = _compare(DataCollatorForLanguageModeling(pad_token_id=0), items, qwen3_tokenizer)
    assert got.unlabelled == 1 and got.compared == 0
    assert got.collator == "TRL's DataCollatorForLanguageModeling"


def test_an_item_is_found_in_its_collated_row_padded_either_side_or_cut():
    assert find_offset([5, 6, 7], None, [5, 6, 7, 0, 0]) == (0, 3)
    assert find_offset([5, 6, 7], None, [0, 0, 5, 6, 7]) == (2, 3)
    assert find_offset([5, 6, 7, 0], [1, 1, 1, 0], [0, 5, 6, 7]) == (1, 3)
    assert find_offset([5, 6, 7, 8], None, [5, 6]) == (0, 2)
    assert find_offset([5, 6, 7], None, [1, 2, 3]) is None
