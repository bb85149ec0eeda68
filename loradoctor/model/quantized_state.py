"""A quantized base measured the way it trains, and left exactly as found.

bitsandbytes changes its layers as they run. On a CPU with AVX512-BF16, a 4-bit layer's first
forward in eval mode on an input that needs no gradient rewrites the layer in place into a
CPU-only layout whose matmul has no backward (gradients stop at it, PEFT's merge misreads it,
and widths not multiples of 32/64 crash halfway through the rewrite); every forward casts a
bias into the compute dtype in place; an 8-bit layer's first forward moves its codes and scales
into the layer's state, and in eval mode it computes in int8 where training dequantizes.

- `training_path(model)` makes every quantized layer run its forward in training mode, whatever
  the model's mode (a hook sets the layer's own flag for the call and puts it back): the path
  training takes, never the CPU rewrite, and with the rest of the model in eval, no dropout.
- `kept(model)` puts back every quantized layer's state after a block, exactly: bitsandbytes
  assigns new tensors and attributes rather than writing into the old ones, so keeping the
  references and the attribute dicts (module, weight, quant state, nested state, 8-bit matmul
  state) is exact and costs no copy.
- `held(model)`: both for a whole run, on a model the user gave; returns what releases it.
- `computing_in(model, dtype)`: the quantized layers compute in `dtype` for a numerics pass.
- `own_output(layer, x)`: a quantized layer's own output, to compare an adapted layer with.
- `fingerprint(model)` / `differences(a, b)`: every quantized layer's state bit for bit (the
  codes, scales, quant state, bias, 8-bit CB/SCB, flags), for the "left as found" tests.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .quantized import FOUR_BIT, quant_kind, quantized_layers

_MODES: dict[int, list[bool]] = {}  # id(layer) -> its own training flags, during its forward


def _enter_training(module: nn.Module, args) -> None:
    _MODES.setdefault(id(module), []).append(module.training)
    module.training = True


def _leave_training(module: nn.Module, args, output) -> None:
    stack = _MODES.get(id(module))
    if stack:
        module.training = stack.pop()
        if not stack:
            del _MODES[id(module)]


def training_path(model: nn.Module) -> Callable[[], None]:
    """Hooks that run every quantized layer's forward in training mode; returns their remover.
    A layer that already has them (a copy of a model that had) is left as it is."""
    handles = []
    for layer in quantized_layers(model).values():
        if _enter_training in layer._forward_pre_hooks.values():
            continue
        handles.append(layer.register_forward_pre_hook(_enter_training))
        handles.append(layer.register_forward_hook(_leave_training, always_call=True))

    def remove() -> None:
        for handle in handles:
            handle.remove()
    return remove


@contextmanager
def computing_in(model: nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """Every quantized layer computes in `dtype` for the block, the rest of the model as it is:
    a 4-bit layer's compute dtype is set (it casts its input to it and its output back), an
    8-bit layer, which computes in its input's dtype, gets its input cast and its output cast
    back by hooks. Everything is put back after the block (`kept`)."""
    handles = []
    with kept(model):
        try:
            for layer in quantized_layers(model).values():
                if quant_kind(layer) == FOUR_BIT:
                    layer.compute_dtype = dtype
                    continue
                handles.append(layer.register_forward_pre_hook(_input_caster(dtype)))
                handles.append(layer.register_forward_hook(_output_caster, always_call=True))
            yield
        finally:
            for handle in handles:
                handle.remove()


_INPUT_DTYPES: dict[int, list[torch.dtype]] = {}  # id(layer) -> its inputs' dtypes, in a call


def _input_caster(dtype: torch.dtype):
    def cast(module: nn.Module, args):
        if not args or not isinstance(args[0], torch.Tensor):
            return None
        _INPUT_DTYPES.setdefault(id(module), []).append(args[0].dtype)
        return (args[0].to(dtype), *args[1:])
    return cast


def _output_caster(module: nn.Module, args, output):
    stack = _INPUT_DTYPES.get(id(module))
    if not stack:
        return None
    dtype = stack.pop()
    if not stack:
        del _INPUT_DTYPES[id(module)]
    return output.to(dtype) if isinstance(output, torch.Tensor) else None


def own_output(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A quantized layer's output on `x` by its own kernel, in training mode for the call (as
    the adapted layer around it computes its base part), without a graph.

    The kernel is the layer class's own forward: a forward set on the instance (a hand-written
    LoRA that patches `module.forward`) adds the adapter, which is what the caller compares the
    layer's output with. accelerate's placement hook, where there is one, still moves the
    input and the weights as it does in training."""
    forward = type(layer).forward
    hook = getattr(layer, "_hf_hook", None)
    mode = layer.training
    layer.training = True
    try:
        with torch.no_grad():
            if hook is None:
                return forward(layer, x)
            args, kwargs = hook.pre_forward(layer, x)
            return hook.post_forward(layer, forward(layer, *args, **kwargs))
    finally:
        layer.training = mode


def _objects(layer: nn.Module) -> list[Any]:
    """The objects whose attributes bitsandbytes reassigns: the layer, its weight, the 4-bit
    quant state and its nested state, the 8-bit matmul state."""
    weight = layer.weight
    state = getattr(weight, "quant_state", None)
    nested = getattr(state, "state2", None) if state is not None else None
    return [o for o in (layer, weight, state, nested, getattr(layer, "state", None))
            if o is not None]


@contextmanager
def kept(model: nn.Module) -> Iterator[None]:
    """Every quantized layer's state put back after the block, bit for bit."""
    restore = _saved(model)
    try:
        yield
    finally:
        restore()


def _saved(model: nn.Module) -> Callable[[], None]:
    saved = []
    for layer in quantized_layers(model).values():
        bias = getattr(layer, "bias", None)
        saved.append((layer, layer.weight, layer.weight.data,
                      None if bias is None else (bias, bias.data),
                      [(o, dict(vars(o))) for o in _objects(layer)]))

    def restore() -> None:
        for layer, weight, data, bias, attributes in saved:
            for obj, values in attributes:
                obj.__dict__.clear()
                obj.__dict__.update(values)
            weight.data = data
            if bias is not None:
                bias[0].data = bias[1]
    return restore


def held(model: Any) -> Callable[[], None] | None:
    """For a whole run on the user's own model: `training_path` and `kept` from now until the
    returned function is called. None when the model has no quantized layer."""
    if not isinstance(model, nn.Module) or not quantized_layers(model):
        return None
    restore, remove = _saved(model), training_path(model)

    def release() -> None:
        remove()
        restore()
    return release


# --- bit for bit ----------------------------------------------------------------------------


def fingerprint(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Every quantized layer's state, as comparable copies (tensors as their bytes)."""
    return {name: _layer_fingerprint(layer) for name, layer in quantized_layers(model).items()}


def differences(before: dict, after: dict) -> list[str]:
    """`layer: field` for every field that differs bit for bit (empty when none does)."""
    out = []
    for name in sorted(set(before) | set(after)):
        a, b = before.get(name, {}), after.get(name, {})
        out.extend(f"{name}: {key}" for key in sorted(set(a) | set(b))
                   if not _same(a.get(key), b.get(key)))
    return out


def _layer_fingerprint(layer: nn.Module) -> dict[str, Any]:
    weight = layer.weight
    out = {"weight.class": type(weight).__name__, "weight.data": _frozen(weight.data),
           "weight.requires_grad": weight.requires_grad, "training": layer.training}
    out.update({f"weight.{k}": _frozen(v) for k, v in vars(weight).items() if k != "module"})
    if getattr(layer, "bias", None) is not None:
        out["bias"] = _frozen(layer.bias.data)
    out.update({k: _frozen(v) for k, v in vars(layer).items()
                if not k.startswith("_") and k != "training"})
    return out


def _frozen(value: Any, depth: int = 0) -> Any:
    """A detached, comparable copy: tensors by dtype, shape, stride and bytes (NaN-safe);
    a quant state or matmul state by its attributes; a module by identity."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
        raw = t.contiguous().reshape(-1).view(torch.uint8).clone() if t.numel() else None
        return ("tensor", str(t.dtype), tuple(t.shape), tuple(t.stride()), str(t.device), raw)
    if isinstance(value, (int, float, str, bool, type(None), torch.dtype, torch.device,
                          torch.Size)):
        return ("value", type(value).__name__, repr(value))
    if isinstance(value, type):
        return ("type", f"{value.__module__}.{value.__qualname__}")
    if isinstance(value, (list, tuple)):
        return ("sequence", tuple(_frozen(v, depth + 1) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), _frozen(v, depth + 1)) for k, v in value.items())))
    if depth < 3 and hasattr(value, "__dict__") and not isinstance(value, nn.Module):
        return ("object", type(value).__name__, _frozen(vars(value), depth + 1))
    return ("identity", type(value).__name__, id(value))


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b
