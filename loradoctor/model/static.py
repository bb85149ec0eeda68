"""Static mode: check-model on a model built on the meta device, for models larger than memory.

A model directory whose weights would not fit in memory (or that holds only `config.json`,
`placement.static_reason`) is built from its config on the meta device: every parameter has a
shape and a dtype but no storage, so an 8B or 70B model costs a few hundred MB of Python
objects. The user's apply code (or PEFT) runs on it as on a real model. MiniMind-style code
creates its adapters on `module.weight.device` (meta too); code that creates them on the CPU
gets real, small tensors. Neither is read for values here.

What runs without weight values (the rules declared `needs_values=False`): the static reading
of each patched forward's closure cells, defaults and partial arguments (LD201), class-level
patches (LD202), patches of patches and stacked adapters (LD203), adapters no forward can
reach (LD204, from the code alone), PEFT target names (LD205), coverage and trainable
parameter counts (LD210) and the declared scaling (LD405). Every other model rule needs a
forward pass or a tensor's values and is skipped with the reason (`registry.applicable`).
`--static` (`check(static=True)`) forces the mode on any model.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .layer_verdict import ModuleProbe, read_verdict
from .references import owner_index, reads, unreachable
from .shared import discovery


def build_meta(ctx):
    """The base model built with no storage: from the directory's config, or the user's model
    code run under `torch.device("meta")`; a live model is checked as it is."""
    import torch

    if ctx.model_given is not None:
        import copy
        return ctx.model_given if ctx.live_adapted else copy.deepcopy(ctx.model_given)
    if ctx.model_spec is not None:
        from .user_model import build
        with torch.device("meta"):
            return build(ctx.model_spec, ctx.model_args, "meta", ctx.seed)
    return meta_from_config(ctx.model_dir)


def meta_from_config(model_dir: Path):
    """`AutoModelForCausalLM.from_config` on the meta device, fp32, eval mode."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..text import one_line
    from ..inputs.pretrained import own_class_hint, local_dir

    d = local_dir(model_dir, "model")
    if not (d / "config.json").exists():
        raise InputError(f"model {model_dir}: no config.json, not a Hugging Face model directory")
    try:
        config = AutoConfig.from_pretrained(str(d), local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - the config is the user's input
        raise InputError(f"model {model_dir}: cannot be built from its config: "
                         f"{one_line(exc)}{own_class_hint(d)}") from exc
    return model.eval()


def note(ctx) -> str:
    return f"static mode, built on the meta device: {ctx.static_why}"


def static_probe(ctx) -> ModuleProbe:
    """The per-layer probe's verdicts without calling any layer: each adapted layer's verdict
    from what its patched forward holds (`layer_verdict.read_verdict`) and whether its code can
    reach its adapter at all. A reference to another layer that the code reads is a confirmed
    alias (status `aliased`); an adapter no forward can reach is `no-delta`; else `unchecked`."""
    disc = discovery(ctx)
    owners = owner_index(disc)
    verdicts = []
    for a in (x for x in disc.adapters if x.layer_type == "linear"):
        v = read_verdict(a, "unchecked", disc, owners)
        read = [ref for ref in v.static_refs if reads(a.host.__dict__.get("forward"), ref[0])]
        if read:
            v.status = "aliased"
            v.static_refs = read + [r for r in v.static_refs if r not in read]
        elif unreachable(a):
            v.status = "no-delta"
        verdicts.append(v)
    return ModuleProbe(verdicts, 0.0)
