"""Do a packed row's samples stay apart? The packed row's logits against each sample run alone.

Whether attention keeps the samples of a packed row apart depends on what the batch holds
(restarting position ids, flash-attention offsets, an attention mask), on the attention
implementation and on the library version (transformers 5 builds a block-diagonal mask from
restarting position ids only when the forward gets no attention mask and makes no cache:
`TrainingArguments.use_cache` is False, a model config's is usually True), so it is measured,
not assumed. The model runs the packed row as the trainer hands it (every key of the batch but
the labels, on the model's device, in eval mode for the call so no dropout is drawn), then each
sample alone (its ids and position ids). The first sample has no sample before it to see: its
difference is the numeric floor of the two computations; a later sample whose logits move far
beyond that floor attended to the samples before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

MAX_ROWS = 2  # packed rows run (each: the row, then each sample alone)
MAX_SAMPLES = 8  # samples of a row run alone
FLOOR_FACTOR = 8  # a difference this many times the first sample's is not numeric noise
# Below this share of the logits' scale, a difference is the dtype's rounding.
RELATIVE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.bfloat16: 2e-2,
            torch.float16: 4e-3}


@dataclass
class SampleDrift:
    """One sample's logits in the packed row against the sample run alone."""

    location: str
    index: int  # its place in the packed row (0: the first)
    tokens: int
    diff: float  # max |packed - alone|
    scale: float  # max |alone|


@dataclass
class PackedAttention:
    """What the measurement found, over the packed rows it ran."""

    samples: list[SampleDrift] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # what the model was given
    attention: str = "?"  # the attention implementation
    use_cache: Any = None  # the model config's, which decides whether a cache is made
    dtype: str = "?"

    @property
    def floor(self) -> float:
        return max((s.diff for s in self.samples if s.index == 0), default=0.0)

    @property
    def tolerance(self) -> float:
        scale = max((s.scale for s in self.samples), default=0.0)
        relative = RELATIVE.get(getattr(torch, self.dtype, torch.float32), 1e-4)
        return max(FLOOR_FACTOR * self.floor, relative * scale)

    @property
    def apart(self) -> list[SampleDrift]:
        return [s for s in self.samples if s.index > 0]

    @property
    def leaking(self) -> list[SampleDrift]:
        """Later samples whose logits changed beyond the tolerance: they saw other samples."""
        return [s for s in self.apart if s.diff > self.tolerance]

    def to_evidence(self) -> dict:
        return {"attention": self.attention, "use_cache": self.use_cache, "dtype": self.dtype,
                "keys": self.keys, "floor": self.floor, "tolerance": self.tolerance,
                "samples": [{"location": s.location, "tokens": s.tokens, "max_abs_diff": s.diff}
                            for s in self.samples]}


def measure(model, batches: list[Any], rows: list, max_rows: int = MAX_ROWS,
            max_samples: int = MAX_SAMPLES) -> PackedAttention:
    """Run the first `max_rows` packed rows (`masking.packing.PackedRow`) and their samples
    alone through `model`; its modes are put back. Raises `TypeError` (and what the model
    raises) when it cannot take the batch's keys."""
    param = next(model.parameters())
    config = getattr(model, "config", None)
    out = PackedAttention(attention=str(getattr(config, "_attn_implementation", "?")),
                          use_cache=getattr(config, "use_cache", None),
                          dtype=str(param.dtype).removeprefix("torch."))
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            for packed in rows[:max_rows]:
                inputs = row_inputs(batches[packed.batch], packed.row, param.device)
                out.keys = sorted(inputs)
                logits = _logits(model(**inputs))[0]
                for k, (start, end) in enumerate(packed.bounds[:max_samples]):
                    alone = {"input_ids": inputs["input_ids"][:, start:end]}
                    if "position_ids" in inputs:
                        alone["position_ids"] = inputs["position_ids"][:, start:end]
                    single = _logits(model(**alone))[0].float()
                    diff = (logits[start:end].float() - single).abs().max().item()
                    out.samples.append(SampleDrift(f"{packed.location} sample {k}", k,
                                                   end - start, diff,
                                                   single.abs().max().item()))
    finally:
        for m, mode in modes:
            m.train(mode)
    return out


def row_inputs(batch: Any, row: int, device) -> dict[str, Any]:
    """What the model gets for batch row `row`: every key but the labels. A batch of one row
    is given as it is (its flash-attention offsets included); of several, the keys that have
    a row each are cut to this row and the batch-wide ones left out."""
    ids = batch["input_ids"]
    n = len(ids)
    out = {}
    for key, value in batch.items():
        if key == "labels":
            continue
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value) if key in ("input_ids", "position_ids",
                                                      "attention_mask") else value
        if isinstance(value, torch.Tensor):
            if n > 1:
                if value.dim() < 2 or value.shape[0] != n:
                    continue
                value = value[row:row + 1]
            elif value.dim() == 1 and key in ("input_ids", "position_ids", "attention_mask"):
                value = value[None]
            value = value.to(device)
        elif n > 1:
            continue
        out[key] = value
    return out


def _logits(output: Any) -> torch.Tensor:
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, (tuple, list)):
        logits = output[0]
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if logits is None:
        logits = output
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise TypeError("the model's forward returns no (batch, tokens, vocab) logits")
    return logits
