"""The probe batch that check-model runs the model on.

From the user's data through the tokenizer's chat template when given, else from a few
built-in chat turns through a tokenizer beside the model, else random token ids under a fixed
seed: a model directory without a tokenizer is normal and must work. Labels are the input ids
(every position supervised), which is what a gradient-flow probe needs; they are aligned with
`input_ids` the HF way, and `model.convention` hands them to a model that reads them otherwise.

The user's own model (`--model file.py:NAME`) may have no `config.vocab_size` and a context
shorter than the probe (nanoGPT's `block_size`): the vocabulary is read from its config, its
own attributes or its embedding, and the probe is cut to the longest input it takes.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

from ..errors import InputError

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
    model = ctx.base_model
    vocab = vocab_size(model)
    length = min(length, max_length(model) or length)
    if tok is not None and getattr(tok, "chat_template", None):
        if ctx.data is not None:
            from ..inputs.records import read_records
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


VOCAB_NAMES = ("vocab_size", "n_vocab", "num_tokens", "ntoken")
LENGTH_NAMES = ("block_size", "max_position_embeddings", "n_positions", "max_seq_len",
                "max_seq_length", "context_length", "n_ctx", "seq_len")


def vocab_size(model) -> int:
    """The model's vocabulary: its config's, its own attribute, else its input embedding's rows."""
    for holder in (getattr(model, "config", None), model):
        for name in VOCAB_NAMES:
            n = getattr(holder, name, None)
            if isinstance(n, int) and n > 0:
                return n
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if emb is None:
        from torch import nn
        emb = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if emb is None:
        raise InputError(f"model {type(model).__name__}: no vocab_size in its config and no "
                         f"nn.Embedding, so no token ids can be drawn for the probe batch")
    return int(emb.num_embeddings)


def max_length(model) -> int | None:
    """The longest input the model takes (`block_size`, `max_position_embeddings`), or None."""
    for holder in (getattr(model, "config", None), model):
        for name in LENGTH_NAMES:
            n = getattr(holder, name, None)
            if isinstance(n, int) and n > 1:
                return n
    return None
