"""Static mode: check-model on a model built on the meta device, for models larger than memory.

A model directory whose weights would not fit in memory (or that holds only `config.json`) is
built from its config on the meta device: every parameter has a shape and a dtype but no
storage, so an 8B or 70B model costs a few hundred MB of Python objects. The user's apply code
(or PEFT) runs on it as on a real model. MiniMind-style code creates its adapters on
`module.weight.device` (meta too); code that creates them on the CPU gets real, small tensors.
Neither is read for values here.

What runs without weight values (`STATIC_RULES`): the static reading of each patched
forward's closure cells, defaults and partial arguments (LD201), class-level patches (LD202),
patches of patches and stacked adapters (LD203), adapters no forward can reach (LD204, from
the code alone), PEFT target names (LD205), coverage and trainable parameter counts (LD210) and
the declared scaling (LD405). Every other model rule needs a forward pass or a tensor's
values and is skipped with the reason. `--static` (`check(static=True)`) forces the mode on
any model.
"""

from __future__ import annotations

import dataclasses
import dis
import json
import os
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..rules import Rule, SkipCheck

# The rules that read only the module tree, shapes and the user's code.
STATIC_RULES = ("LD201", "LD202", "LD203", "LD204", "LD205", "LD210", "LD405")
# check-model keeps the base model and a fresh adapted copy (the persistence round trip) in
# fp32 at the same time: the weights must fit this many times into available memory.
COPIES = 2
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "float64": 8,
          "int8": 1, "uint8": 1, "float8_e4m3fn": 1, "float8_e5m2": 1}


# --- does the model fit? -------------------------------------------------------------------


def available_memory(device: str = "cpu") -> int | None:
    """Bytes the run can still use on `device`: MemAvailable from /proc/meminfo on the CPU
    (else physical pages from sysconf), free memory on a CUDA device; None when unknown."""
    if device.startswith("cuda"):
        try:
            import torch
            free, _total = torch.cuda.mem_get_info(torch.device(device))
            return int(free)
        except Exception:  # noqa: BLE001 - no CUDA: nothing to say
            return None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def weight_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in Path(model_dir).iterdir()
                  if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
                  and not p.name.startswith(("training_args", "optimizer", "scheduler")))


def fp32_bytes(model_dir: Path) -> int | None:
    """What the weights take once loaded in fp32 (check-model's dtype): the safetensors index's
    `total_size` (else the weight files' sizes) scaled from the stored dtype in config.json."""
    d = Path(model_dir)
    stored = None
    for index in sorted(d.glob("*.index.json")):
        try:
            stored = int(json.loads(index.read_text(encoding="utf-8"))["metadata"]["total_size"])
            break
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if stored is None:
        files = weight_files(d)
        if not files:
            return None
        stored = sum(p.stat().st_size for p in files)
    try:
        config = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32").replace("torch.", "")
    return stored * 4 // _BYTES.get(dtype, 4)


def static_reason(model_dir: Path | None, device: str = "cpu") -> str | None:
    """Why `model_dir` must be checked statically (no weights, or too large), else None."""
    if model_dir is None or not Path(model_dir).is_dir():
        return None
    if not (Path(model_dir) / "config.json").exists():
        return None  # load.load_model says what is wrong with it
    if not weight_files(model_dir):
        return f"{model_dir} holds no weight files (only its config)"
    need = fp32_bytes(model_dir)
    have = available_memory(device)
    if need is None or have is None or need * COPIES <= have:
        return None
    return (f"its weights take {_gb(need)} in fp32 and check-model keeps {COPIES} copies, "
            f"but {_gb(have)} of {'GPU' if device.startswith('cuda') else ''} memory is "
            f"available".replace("of  memory", "of memory"))


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GB"


# --- building on the meta device -----------------------------------------------------------


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


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --- which rules run -----------------------------------------------------------------------


def rules_for(ctx, rules: list[Rule]) -> list[Rule]:
    """In static mode, every rule outside `STATIC_RULES` becomes a skip that says why."""
    if not getattr(ctx, "static", False):
        return rules
    return [r if r.code in STATIC_RULES else _skipping(r) for r in rules]


def _skipping(rule: Rule) -> Rule:
    def check(ctx):
        raise SkipCheck(f"static mode ({ctx.static_why}): this rule needs weight values "
                        f"(a forward pass or the adapters' values)")
    check.__doc__ = rule.check.__doc__
    return dataclasses.replace(rule, check=check)


def note(ctx) -> str:
    return f"static mode, built on the meta device: {ctx.static_why}"


# --- the per-layer verdicts, from the code alone -------------------------------------------


def static_probe(ctx):
    """`measurements.ModuleProbe` without calling any layer: each adapted layer's verdict from
    what its patched forward holds (`measurements._static`) and whether its code can reach its
    adapter at all. A reference to another layer that the code reads is a confirmed alias
    (status `aliased`); an adapter no forward can reach is `no-delta`; else `unchecked`."""
    from .measurements import LayerVerdict, ModuleProbe, _owner_index, _static, discovery

    disc = discovery(ctx)
    owners = _owner_index(disc)
    verdicts = []
    for a in (x for x in disc.adapters if x.layer_type == "linear"):
        v = LayerVerdict(a, "unchecked", a.in_features, patched="forward" in a.host.__dict__)
        _static(v, a, disc, owners)
        read = [ref for ref in v.static_refs if _reads(a.host.__dict__.get("forward"), ref[0])]
        if read:
            v.status = "aliased"
            v.static_refs = read + [r for r in v.static_refs if r not in read]
        elif _unreachable(a):
            v.status = "no-delta"
        verdicts.append(v)
    return ModuleProbe(verdicts, 0.0)


def _reads(fn: Any, via: str) -> bool:
    """Does the patched function's code read the variable `via` names? A closure variable
    always is (Python keeps only free variables the code uses); a default argument only when
    the body loads it; a partial argument is passed to the function, so it is."""
    kind, _, var = via.rpartition(" ")
    if kind != "default argument":
        return True
    code = getattr(fn, "__code__", None)
    if code is None:
        return True
    return any(ins.argval == var for ins in dis.get_instructions(code)
               if ins.opname.startswith(("LOAD_FAST", "LOAD_DEREF", "LOAD_CLOSURE")))


def _unreachable(a) -> bool:
    """The adapter cannot take part in its layer's output, judged from the code alone:
    attached to a layer whose forward is the library's own (never patched), or held by a
    patched forward that neither holds it nor holds the layer it could look it up on."""
    from .adapters import forward_refs

    if a.style != "attached":
        return False
    host = a.host
    fn = host.__dict__.get("forward")
    if fn is None:
        cls_forward = getattr(type(host), "forward", None)
        module = getattr(cls_forward, "__module__", "") or ""
        return module.startswith("torch.")  # nn.Linear.forward knows nothing of `.lora`
    refs = forward_refs(host)
    if refs is None or refs.holds_self or _reads_globals(fn):
        return False
    held = [(via, m) for via, m in [*refs.uses, *refs.calls] if _reads(fn, via)]
    parts = {id(m) for m in a.owner.modules()} if a.owner is not None else set()
    parts.discard(id(host))
    if any(id(m) in parts for _, m in held):
        return False
    # Holding some other module of the user's, it may add the adapter through it: unknown.
    return all(m is host or _is_library_linear(m) for _, m in held)


def _reads_globals(fn: Any) -> bool:
    """The code reads a global that may hold adapters (a dict, a list, a module instance):
    anything but an imported module, a class or a builtin."""
    import builtins
    import inspect
    import types

    code = getattr(fn, "__code__", None)
    if code is None:
        return True  # a partial or a callable object: followed by forward_refs, not here
    glb = getattr(fn, "__globals__", {})
    for ins in dis.get_instructions(code):
        if ins.opname != "LOAD_GLOBAL":
            continue
        name = str(ins.argval).replace("NULL + ", "")
        value = glb.get(name, getattr(builtins, name, None))
        if not isinstance(value, types.ModuleType) and not inspect.isclass(value) \
                and not inspect.isbuiltin(value) and value is not None:
            return True
    return False


def _is_library_linear(m) -> bool:
    from torch import nn
    return type(m) is nn.Linear
