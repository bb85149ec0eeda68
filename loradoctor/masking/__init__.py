"""Label masking checked against the chat template: the oracle and the comparison with user code.

- `template`: what a chat template looks like, learned once per tokenizer by rendering probe
  conversations (the assistant header, the end-of-turn token, BOS, history rewriting).
- `oracle`: which token positions *should* be supervised in a conversation, from the template;
  `structure`: the same truth recovered from token rows alone.
- `scan`: the streaming pass over a data file (batched, optionally several processes) that
  measures the data and tokenizer alone; `record_scan`: the records counted, readable or not.
- `alignment` and `sample_diff`: one sample's labels judged against the truth; `compare`: the
  user's `(input_ids, labels)` against the oracle, sample by sample, added up.
- `markers`: marker token lists and marker-building source code found in the user's code.
- `analysis`: the one pass the masking rules read; `workers` and `shares`: that pass in chunks
  or processes; `fuzz_search`: generated conversations through the user's code.
- `collated`: the dataset's labels against what the collator makes of them; `packing`: the
  samples of packed batch rows and the labels scored across their boundaries.
- `wording`: measured counts in words (`3 of 10 samples ...: lines 3, 7, 9-12`).
"""
