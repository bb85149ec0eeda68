"""Label masking checked against the chat template: the oracle and the comparison with user code.

- `template`: what a chat template looks like, learned once per tokenizer by rendering probe
  conversations (the assistant header, the end-of-turn token, BOS, history rewriting).
- `oracle`: which token positions *should* be supervised in a conversation, from the template.
- `scan`: the streaming pass over a data file (batched, optionally several processes) that
  measures the data and tokenizer alone.
- `compare`: the user's `(input_ids, labels)` against the oracle, sample by sample.
- `markers`: marker token lists and marker-building source code found in the user's code.
"""
