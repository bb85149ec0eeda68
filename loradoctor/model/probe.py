"""The probe batch that check-model runs the model on.

From the user's data through the tokenizer's chat template when given, else from a few
built-in chat turns through a tokenizer beside the model, else random token ids under a fixed
seed: a model directory without a tokenizer is normal and must work. Labels are the input ids
(every position supervised), which is what a gradient-flow probe needs.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

BUILTIN_CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "Paris is the capital of France."}],
    [{"role": "user", "content": "Give me a word that rhymes with cat."},
     {"role": "assistant", "content": "Hat."}],
    [{"role": "system", "content": "You answer in one short sentence."},
     {"role": "user", "content": "Why is the sky blue?"},
     {"role": "assistant", "content": "Air scatters blue light more than red light."}],
    [{"role": "user", "content": "用一句话介绍你自己。"},
     {"role": "assistant", "content": "我是一个乐于助人的助手。"}],
]


def probe_batch(ctx) -> dict[str, Any]:
    """(B, T) input_ids / attention_mask / labels on ctx.device, plus where they came from."""
    import torch

    batch, length = ctx.probe_shape
    tok = ctx.tokenizer
    vocab = ctx.base_model.config.vocab_size
    if tok is not None and getattr(tok, "chat_template", None):
        if ctx.data is not None:
            from ..load import read_records
            convs = [r.messages for r in islice(read_records(ctx.data), batch * 4) if r.messages]
            source = f"{ctx.data} through the tokenizer's chat template"
        else:
            convs = BUILTIN_CONVERSATIONS
            source = "built-in chat turns through the tokenizer's chat template"
        texts = [tok.apply_chat_template(c, tokenize=False) for c in convs] or [""]
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        # Concatenate and cut into B rows of T tokens, so every position is real text.
        stream = [i for row in ids for i in row if i < vocab]
        while len(stream) < batch * length:
            stream = stream + stream if stream else [0]
        input_ids = torch.tensor(stream[: batch * length]).view(batch, length)
    else:
        gen = torch.Generator().manual_seed(ctx.seed)
        input_ids = torch.randint(0, vocab, (batch, length), generator=gen)
        source = f"random token ids (seed {ctx.seed}): no tokenizer given or beside the model"
    input_ids = input_ids.to(ctx.device)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "labels": input_ids.clone(), "source": source}
