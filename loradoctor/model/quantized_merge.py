"""Merging into a quantized base: what requantizing the merged weights does to the model.

PEFT's `merge_and_unload()` on a QLoRA model dequantizes each adapted layer, adds
`scaling * B @ A` and quantizes the sum again with the layer's own settings. The exact merge is
`W + scaling * B @ A` in float (a base loaded in bf16 or fp32); requantizing rounds every
weight back onto the quantization grid, and the NF4 grid is coarser than what a LoRA adapter
usually changes, so much of the adapter can round away.

`requantization(...)` measures it on loradoctor's fresh copy after LD502's merge, where the
quantized layers are already plain fp32 layers holding their dequantized weights
(`quantized.float_copies`): the logits of the exact merge against those of the unmerged copy
(the adapter's own effect) and against those of the same copy with each merged weight
requantized (the requantization error), both as root mean square over the probe batch's
logits, and the share of the effect the requantized model keeps (its change projected on the
exact one). The merged weights are set to their requantized values: the copy is ours.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from .quantized import requantized_weight, settings
from .shared import logits


@dataclass
class Requantization:
    """The adapter's effect on the logits and what requantizing the merge does to it."""

    quantization: dict[str, Any]  # the quantized layers' settings (`quantized.settings`)
    layers: int                   # merged layers requantized
    adapter_effect: float         # rms(logits of the exact merge - logits unmerged)
    requantization_error: float   # rms(logits requantized - logits of the exact merge)
    kept: float                   # share of the effect the requantized merge keeps
    effect_max: float             # the largest |logit| change of the exact merge

    @property
    def ratio(self) -> float:
        return self.requantization_error / self.adapter_effect if self.adapter_effect else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def requantization(model, probe: dict, conv, merged_layers: list[tuple[Any, Any]],
                   unmerged: torch.Tensor, merged: torch.Tensor) -> Requantization:
    """The requantized merge of `model` against its exact merge.

    `merged_layers` pairs each merged fp32 layer of `model` with the quantized layer it
    replaced; `unmerged` and `merged` are the logits (B, T, V) before and after the exact
    merge. `unmerged` is used up (it becomes the effect)."""
    effect = unmerged.neg_().add_(merged)  # (B, T, V): the adapter's own change
    with torch.no_grad():
        for linear, original in merged_layers:
            w = linear.weight
            w.copy_(requantized_weight(original, w.detach().float()).to(w.device, w.dtype))
    error = logits(model, probe, conv).float().sub_(merged)  # (B, T, V)
    effect_sq = _dot(effect, effect)
    # (requantized - unmerged) projected on the exact change: (error + effect) . effect
    kept = (_dot(error, effect) + effect_sq) / effect_sq if effect_sq else 0.0
    count = effect.numel()
    return Requantization(settings(merged_layers[0][1]), len(merged_layers),
                          (effect_sq / count) ** 0.5, (_dot(error, error) / count) ** 0.5,
                          kept, float(effect.abs().max()))


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.sum(a * b, dtype=torch.float64))
