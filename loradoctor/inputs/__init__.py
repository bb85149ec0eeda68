"""Reading what the user points at, one layer below everything that judges it.

- `pretrained`: local Hugging Face directories (models, tokenizers), dtypes and devices.
- `specs`: the user's code from a SPEC (`file.py:NAME`), `KEY=VALUE` arguments, PEFT settings.
- `records`: chat records of the four shapes, from JSON Lines or a `.json` list.
- `rows`: token rows (`input_ids` and `labels`) from a file, a dataset instance or batches;
  a packed batch row split into its samples.
- `user_dataset`: the user's dataset class or labelling function, called as the contract says.
- `user_collator`: the collator a trainer uses, built from a SPEC (with the tokenizer) or live.
- `sources`: where records and rows stream from: JSON Lines, parquet and arrow tables, globs,
  `save_to_disk` folders, live `datasets` objects; shard ranges.

Everything here returns what was asked for or raises `InputError` naming the place; it imports
only the core (`errors`, `text`), never a measurement or a rule.
"""
