"""Running the user's LoRA code (`--apply SPEC`) or PEFT (`--peft ...`) on the loaded model.

The user's function is called as `fn(model, **kwargs)`. If it returns an `nn.Module`, that is
the adapted model (PEFT style); otherwise the model it received was adapted in place. If it
raises, the user gets one line naming their file and line (exit 2): a pipeline whose LoRA code
cannot even run is an input problem, not a finding. Aliasing crashes happen later, in forward,
and are explained by the wiring checks. PEFT on a quantized base (QLoRA) runs as QLoRA guides
run it: `prepare_model_for_kbit_training` first, then `get_peft_model`.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Iterator

from ..errors import InputError
from ..text import raised_at


def apply_adapters(ctx, model=None):
    """Run --apply/--peft on `model` (default: the context's base model, adapted in place).

    For the context's own model, torch's RNG is seeded with the run's seed for the call (and
    given back as it was after): the adapters' random start (A's init, PEFT's or the user's) is
    the same in every run, so a report's figures are too. A fresh copy (`model` given) draws
    from whatever its caller seeded: a start of its own, so that a load which leaves A out
    shows."""
    from .safety import rng_preserved

    if model is not None:
        return _adapt(ctx, model)
    with rng_preserved(getattr(ctx, "seed", 0)):
        return _adapt(ctx, ctx.base_model)


def _adapt(ctx, model):
    import torch.nn as nn

    if ctx.peft_kwargs is not None:
        return _apply_peft(model, ctx.peft_kwargs)
    fn = ctx.apply_fn
    if fn is None:
        return model  # nothing to apply: the checks see the base model as it is
    if not callable(fn):
        raise InputError(f"--apply {ctx.apply_spec}: {type(fn).__name__} is not callable")
    kwargs = dict(ctx.apply_kwargs)
    _check_signature(fn, kwargs, ctx.apply_spec)
    try:
        returned = fn(model, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's code raised
        raise InputError(f"--apply {ctx.apply_spec} raised: {raised_at(exc)}") from exc
    return returned if isinstance(returned, nn.Module) else model


def _check_signature(fn, kwargs, spec) -> None:
    try:
        sig = inspect.signature(fn)
        sig.bind(None, **kwargs)
    except TypeError as exc:
        params = ", ".join(list(sig.parameters)[1:]) or "none"
        raise InputError(f"--apply {spec}: {exc} (it takes: model, {params}; pass the rest with "
                         f"--apply-arg KEY=VALUE)") from None
    except ValueError:
        pass  # builtins without a signature: just call them


def _apply_peft(model, peft_kwargs):
    try:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    except ImportError as exc:
        raise InputError("--peft needs the peft package: pip install peft") from exc
    from .quantized import is_quantized
    if is_quantized(model):  # fp32 norms and embeddings, gradient checkpointing, input grads
        model = prepare_model_for_kbit_training(model)
    kwargs = dict(peft_kwargs)
    target = kwargs.get("target_modules")
    if isinstance(target, str) and target != "all-linear" and "," in target:
        kwargs["target_modules"] = [t.strip() for t in target.split(",")]
    try:
        # PEFT's CAUSAL_LM wrapper calls its model with transformers' keywords (input_ids,
        # labels, ...); the user's own nn.Module (nanoGPT's forward(idx, targets)) gets the
        # plain wrapper, which passes the call through as it is.
        from transformers import PreTrainedModel
        task = {"task_type": "CAUSAL_LM"} if isinstance(model, PreTrainedModel) else {}
        config = LoraConfig(**task, **kwargs)
        return get_peft_model(model, config)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"--peft {peft_kwargs}: {type(exc).__name__}: {exc}") from exc


def fresh_copy(model, seed: int = 0):
    """A deep copy of an adapted model with every adapter back at a fresh start (A random, B 0).

    Stands in for "apply the user's code again on a fresh base" when the user handed us a model
    already adapted and no apply function. A forward patched by a closure keeps calling the
    original's modules from the copy, so such a model cannot be copied faithfully: skip.
    """
    import copy
    import math

    import torch

    from ..rules import SkipCheck
    from .adapters import discover
    from .references import forward_refs

    patched = [n for n, m in model.named_modules() if "forward" in m.__dict__
               and forward_refs(m) is not None]
    if patched:
        raise SkipCheck(f"the model was given already adapted and {patched[0]} has a patched "
                        f"forward, so a copy would still call the original's weights; pass the "
                        f"base model and apply=your apply function to check save/load")
    fresh = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed + 11)
    with torch.no_grad():
        for a in discover(fresh).adapters:
            A = torch.randn(a.rank, a.in_features, generator=gen) / math.sqrt(a.in_features)
            a.set_factors(A.to(a.A.device, a.A.dtype),
                          torch.zeros(a.out_features, a.rank).to(a.B.device, a.B.dtype))
    return fresh


def logits_without_adapters(model, probe, seed: int = 0, conv=None):
    """The model's logits on the probe batch with every adapter's B zeroed for the call
    (called as `conv`, its `model.convention`, says; transformers' way by default)."""
    from .convention import HF, logits

    with adapters_off(model, seed):
        return logits(model, probe, conv or HF).detach().clone()  # (B, T, V)


@contextmanager
def adapters_off(model, seed: int = 0) -> Iterator[None]:
    """The base model inside an adapted one: every adapter's B zeroed (no grad, eval mode)
    and instance-patched forwards set aside for the block; all put back after it."""
    import torch

    from .adapters import discover
    from .safety import preserved

    adapters = discover(model).adapters
    factors = [a.B for a in adapters]
    # A forward patched on the instance by hand-written LoRA (`module.forward = ...`) is set
    # aside for the call: with B zeroed the layer's own class forward is its base, and a wrong
    # patch (closure-aliased: another layer's weights, a shape crash) must not stand in for
    # the base model; LD201/LD401 then judge the patched forward against it, as from the CLI.
    hosts = {id(a.host): a.host for a in adapters if a.style != "peft"}
    patched = [(m, m.__dict__.pop("forward")) for m in hosts.values() if "forward" in m.__dict__]
    try:
        with preserved(model, factors, seed=seed), torch.no_grad():
            model.eval()
            for a in adapters:
                a.B.zero_()
            yield
    finally:
        for m, forward in patched:
            m.forward = forward
