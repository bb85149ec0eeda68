"""bitsandbytes-quantized Linear layers (QLoRA bases): found, read and rebuilt, never changed.

A QLoRA base holds `bitsandbytes.nn.Linear4bit` (NF4 or FP4, a `Params4bit` weight of packed
uint8 codes with a `QuantState`: block scales, code book, compute dtype) or `Linear8bitLt`
(an `Int8Params` weight, int8 codes with one fp32 scale per row). PEFT wraps them
(`peft.tuners.lora.bnb.Linear4bit`, whose `base_layer` is the bitsandbytes layer).

Everything here is told apart by class name, as PEFT itself does, so reading a model never
imports bitsandbytes; only `dequantized_weight` and `requantized_weight` call into it, on a
model that already holds its layers. Nothing here writes into a layer: the weights come back
as new fp32 tensors of the layer's true `(out, in)` shape, whatever layout the layer is in
(the usual packed codes, or the CPU layout bitsandbytes rewrites a layer into in place on its
first eval forward without gradients: `packed_for_cpu`). `float_copies` turns the quantized
layers of a model loradoctor built for itself (a fresh copy) into plain fp32 `nn.Linear`s.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

FOUR_BIT, EIGHT_BIT = "4bit", "8bit"
_PARAMS = {"Params4bit": FOUR_BIT, "Int8Params": EIGHT_BIT}
_LAYERS = {"Linear4bit": FOUR_BIT, "LinearNF4": FOUR_BIT, "LinearFP4": FOUR_BIT,
           "Linear8bitLt": EIGHT_BIT}
_CPU_BLOCK_N = 32  # rows per tile of the CPU layout (bitsandbytes' block_n)
_SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def quant_kind(module: nn.Module) -> str | None:
    """"4bit" or "8bit" for a bitsandbytes layer itself (not a PEFT wrapper around one)."""
    kind = _PARAMS.get(type(getattr(module, "weight", None)).__name__)
    if kind is None and isinstance(module, nn.Module):
        kind = _LAYERS.get(type(module).__name__) if hasattr(module, "weight") else None
    return kind if kind is not None and not hasattr(module, "base_layer") else None


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every bitsandbytes layer of `model` by name, in module order."""
    return {n: m for n, m in model.named_modules() if quant_kind(m) is not None}


def is_quantized(model: Any) -> bool:
    """Whether `model` (an nn.Module) holds at least one bitsandbytes layer."""
    return isinstance(model, nn.Module) and any(
        quant_kind(m) is not None for m in model.modules())


def values_in(param: torch.Tensor) -> int:
    """How many values a parameter holds: a 4-bit weight packs two into each stored byte."""
    state = getattr(param, "quant_state", None)
    if type(param).__name__ == "Params4bit" and state is not None:
        return int(torch.Size(state.shape).numel())
    return param.numel()


def packed_for_cpu(module: nn.Module) -> bool:
    """A 4-bit layer that bitsandbytes rewrote into its CPU layout (an eval forward whose input
    needed no gradient, on a CPU with AVX512-BF16): its forward then has no backward, and
    PEFT's merge misreads it."""
    state = getattr(getattr(module, "weight", None), "quant_state", None)
    return bool(getattr(state, "packing_format_for_cpu", False))


def packed_layers(model: nn.Module) -> list[str]:
    """The 4-bit layers of `model` that bitsandbytes already rewrote into its CPU layout."""
    return [n for n, m in quantized_layers(model).items() if packed_for_cpu(m)]


def shape(module: nn.Module) -> tuple[int, int]:
    """The layer's true (out_features, in_features)."""
    return int(module.out_features), int(module.in_features)


def compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype the layer's matmul computes in: a 4-bit layer's `compute_dtype` (the input's
    dtype when unset); an 8-bit layer computes in its input's dtype (fp32 here)."""
    if quant_kind(module) == FOUR_BIT and module.compute_dtype is not None:
        return module.compute_dtype
    return torch.float32


def settings(module: nn.Module) -> dict[str, Any]:
    """How the layer is quantized, as a report prints it."""
    if quant_kind(module) == EIGHT_BIT:
        return {"kind": EIGHT_BIT, "threshold": float(module.state.threshold)}
    state = module.weight.quant_state
    nested = getattr(state, "original_nested", state.nested) if packed_for_cpu(module) \
        else state.nested
    return {"kind": FOUR_BIT, "quant_type": state.quant_type, "blocksize": int(state.blocksize),
            "double_quant": bool(nested), "compute_dtype": str(compute_dtype(module))[6:]}


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """The layer's weight as a new fp32 `(out, in)` tensor; the layer is only read."""
    kind = quant_kind(module)
    if kind == EIGHT_BIT:
        return _int8_weight(module)
    if kind != FOUR_BIT:
        return module.weight.detach().float()
    if packed_for_cpu(module):
        return _cpu_layout_weight(module)
    import bitsandbytes.functional as bnb_f
    return bnb_f.dequantize_4bit(module.weight.data, module.weight.quant_state).float()


def _int8_weight(module: nn.Module) -> torch.Tensor:
    """W = CB * SCB / 127; the first forward moves CB and SCB from the weight to the layer's
    state, so both places are read."""
    weight, state = module.weight, getattr(module, "state", None)
    codes = getattr(weight, "CB", None)
    scales = getattr(weight, "SCB", None)
    if codes is None and state is not None:
        codes = state.CB
    if scales is None and state is not None:
        scales = state.SCB
    codes = weight.data if codes is None else codes
    return codes.float() * (scales.float().view(-1, 1) / 127.0)


def _cpu_layout_weight(module: nn.Module) -> torch.Tensor:
    """A layer in bitsandbytes' CPU layout read back: its codes interleave 32 rows at a time
    (the first half of bitsandbytes' own inverse, on copies) and its block scales are stored
    transposed, one row per block of every output row."""
    state = module.weight.quant_state
    data = module.weight.data
    packed = data if data.dtype == torch.uint8 else data.view(torch.uint8)
    rows, half = packed.shape
    pairs = packed.reshape(-1, _CPU_BLOCK_N)
    codes = torch.cat([pairs & 0xF, (pairs >> 4) & 0xF], dim=-1)
    codes = codes.reshape(rows // _CPU_BLOCK_N, half, _CPU_BLOCK_N, 2).transpose(-3, -2)
    codes = codes.contiguous().reshape(rows, 2 * half).long()
    scales = state.absmax.float().T.repeat_interleave(state.blocksize, dim=1)
    return state.code.float()[codes] * scales


def requantized_weight(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """`weight` (fp32, `(out, in)`) quantized the way `module` is and read back: what merging
    into this layer (PEFT's `merge_and_unload`) stores. Nothing is written into the layer."""
    import bitsandbytes.functional as bnb_f

    if quant_kind(module) == EIGHT_BIT:
        codes, scales, _ = bnb_f.int8_vectorwise_quant(weight.to(torch.float16))
        return codes.float() * (scales.float().view(-1, 1) / 127.0)
    state = module.weight.quant_state
    nested = getattr(state, "original_nested", state.nested) if packed_for_cpu(module) \
        else state.nested
    dtype = getattr(state, "original_dtype", state.dtype)
    storage = getattr(module.weight, "quant_storage", torch.uint8)
    packed, new_state = bnb_f.quantize_4bit(weight.to(dtype).contiguous(),
                                            blocksize=state.blocksize,
                                            compress_statistics=nested,
                                            quant_type=state.quant_type, quant_storage=storage)
    return bnb_f.dequantize_4bit(packed, new_state).float()


def float_linear(module: nn.Module) -> nn.Linear:
    """A plain fp32 `nn.Linear` computing what the quantized layer holds (dequantized)."""
    out_features, in_features = shape(module)
    bias = getattr(module, "bias", None)
    linear = nn.Linear(in_features, out_features, bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(dequantized_weight(module))
        if bias is not None:
            linear.bias.copy_(bias.detach().float())
    linear.weight.requires_grad_(False)
    if bias is not None:
        linear.bias.requires_grad_(bias.requires_grad)
    return linear.to(module.weight.device).eval()


def float_copies(model: nn.Module) -> dict[str, tuple[nn.Linear, nn.Module]]:
    """Every quantized layer of `model` replaced by its `float_linear`, in place: only for a
    model loradoctor built for itself (a fresh copy), never the user's. Returns name ->
    (the fp32 layer now in the model, the quantized layer it replaced)."""
    replaced = {}
    for name, layer in list(quantized_layers(model).items()):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = float_linear(layer)
        setattr(parent, child, linear)
        replaced[name] = (linear, layer)
    return replaced


def describe(model: nn.Module) -> dict[str, Any] | None:
    """What the report's summary says about a quantized base (None for a model without one):
    the kind and settings of its layers, how many there are, and how many bitsandbytes had
    already rewritten into its CPU layout before loradoctor saw the model."""
    layers = quantized_layers(model)
    if not layers:
        return None
    first = next(iter(layers.values()))
    return {**settings(first), "layers": len(layers),
            "packed_for_cpu": len(packed_layers(model))}


def numerics_note(model: nn.Module) -> tuple[str, set[str]] | None:
    """What a numerics pass in a dtype means on a quantized base, in words, and the dtypes its
    quantized layers are configured to compute in ("fp32", "bf16", "fp16"); None for a model
    without quantized layers."""
    layers = quantized_layers(model).values()
    if not layers:
        return None
    configured = {_SHORT.get(compute_dtype(layer), str(compute_dtype(layer))) for layer in layers}
    quantized_ids = {id(p) for layer in layers for p in layer.parameters()}
    others = sorted({_SHORT.get(p.dtype, str(p.dtype)) for p in model.parameters()
                     if id(p) not in quantized_ids and p.is_floating_point()})
    return (f"the {len(layers)} quantized layers compute in each dtype (as loaded: "
            f"{', '.join(sorted(configured))}); every other parameter stays as loaded "
            f"({', '.join(others)}), as QLoRA trains", configured)
