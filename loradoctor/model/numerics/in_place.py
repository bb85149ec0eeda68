"""The user's model cast in place for one pass, and put back exactly as it was found.

`cast_in_place(model, dtype)` casts every floating parameter and buffer to `dtype` for a block
and then puts back the very same tensor objects (values, dtypes, storage, `requires_grad`, the
`.grad`s); `preserved(model)` runs the passes in eval mode with gradients on and puts back every
module's mode and the RNG states. `passes.py` runs each pass inside both.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def cast_in_place(model, dtype):
    """Cast every floating parameter and buffer to `dtype`; put the very same tensors back after.

    Gradients are set aside too (a pass accumulates its own), and restored as the same objects.
    `dtype` None casts nothing and only sets the gradients aside.
    """
    saved_params, saved_buffers, seen = [], [], set()
    try:
        for module in model.modules():
            for p in module._parameters.values():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                saved_params.append((p, p.data, p.grad))
                p.grad = None
                if dtype is not None and p.is_floating_point() and p.dtype != dtype:
                    p.data = p.data.to(dtype)
            for name, b in module._buffers.items():
                if dtype is not None and b is not None and b.is_floating_point() \
                        and b.dtype != dtype:
                    saved_buffers.append((module, name, b))
                    module._buffers[name] = b.to(dtype)
        yield
    finally:
        for p, data, grad in saved_params:
            p.grad = None
            p.data = data  # the original tensor object: same storage, dtype and values
            p.grad = grad
        for module, name, b in saved_buffers:
            module._buffers[name] = b


@contextmanager
def preserved(model):
    """Eval mode and gradients on for the passes; each module's mode and the RNG states restored."""
    import torch

    modes = [(m, m.training) for m in model.modules()]
    cpu_rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        model.eval()
        # A caller under torch.inference_mode() (a gate inside an eval loop) still gets gradients.
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training
        torch.random.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
