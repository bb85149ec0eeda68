"""Finding the adapters in a model, whatever shape the user's LoRA code gave them.

Four shapes are recognised, in this order:

- PEFT's `LoraLayer` (`lora_A[name]` / `lora_B[name]` / `scaling[name]` of the active adapter);
- a wrapper module that replaced an `nn.Linear` and holds it as a child (`.base`, `.base_layer`,
  `.linear`, ... or simply its one full-size linear child) next to a low-rank pair
  (`.lora_A`/`.lora_B`, `.A`/`.B`, `.down`/`.up`, raw parameters or linears);
- MiniMind style: the `nn.Linear` itself carries the pair (`module.lora = LoRA(...)`, or
  parameters `lora_A`/`lora_B` on a Linear subclass), usually with a patched `module.forward`;
- an adapter that is not registered in the module tree at all (held only by a patched
  forward's closure, defaults or `functools.partial`), found through the forward itself.

The pair is recognised by shapes: `A` is `(r, in)` and `B` is `(out, r)` for the linear's
`(out, in)` weight (or both transposed, `(in, r)` / `(r, out)`, for `x @ A @ B` code), with
`r <= min(in, out)`; names (`A`/`down` for the input side) only break the tie of a square
layer. What a patched forward holds (closure cells, defaults, partial arguments, bound
methods) is read by `references.py`; how layers are named, by `layer_names.py`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from .layer_names import canonical, kind_of, layer_of
from .quantized import dequantized_weight, quant_kind
from .quantized import shape as quantized_shape
from .references import class_patched, forward_refs

# Child names under which a wrapper module commonly keeps the layer it replaced.
BASE_CHILD_NAMES = ("base_layer", "base", "linear", "base_linear", "orig", "original",
                    "original_layer", "original_module", "org_module", "wrapped", "layer",
                    "module", "fc", "dense", "weight_layer")
_A_WORDS = {"a", "lora_a", "down", "lora_down", "in", "proj_in", "w_a", "left"}
_B_WORDS = {"b", "lora_b", "up", "lora_up", "out", "proj_out", "w_b", "right"}


def linear_weight(m: nn.Module) -> torch.Tensor | None:
    """The `(out, in)` weight of a linear-like layer, or None (Conv1D stores it transposed; a
    bitsandbytes layer's is dequantized into a new fp32 tensor, the layer only read)."""
    if isinstance(m, nn.Linear):
        return dequantized_weight(m) if quant_kind(m) is not None else m.weight
    if _is_conv1d(m):
        return m.weight.t()
    return None


def linear_shape(m: nn.Module) -> tuple[int, int] | None:
    """The `(out, in)` shape of a linear-like layer's weight (None when not one), values unread."""
    if isinstance(m, nn.Linear):
        return quantized_shape(m) if quant_kind(m) is not None else tuple(m.weight.shape)
    if _is_conv1d(m):
        return int(m.weight.shape[1]), int(m.weight.shape[0])
    return None


def _is_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D" and getattr(m, "weight", None) is not None \
        and m.weight.dim() == 2 and hasattr(m, "nf")


def is_linear(m: nn.Module) -> bool:
    return linear_shape(m) is not None


@dataclass(eq=False)
class Adapter:
    """One low-rank pair and the layer it adapts."""

    name: str                   # the adapted layer as the base model names it (the location)
    host_name: str              # the module whose forward runs it, in the adapted model
    host: nn.Module
    base: nn.Module             # the layer holding the frozen weight
    base_name: str
    A: torch.Tensor             # input-side factor, as stored
    B: torch.Tensor             # output-side factor, as stored
    A_name: str | None          # parameter name in the model; None when not registered
    B_name: str | None
    transposed: bool            # stored as (in, r) / (r, out) instead of (r, in) / (out, r)
    style: str                  # "peft" | "wrapper" | "attached" | "unregistered"
    owner: nn.Module | None = None  # the adapter module (module.lora) when there is one
    owner_name: str | None = None
    declared_scaling: float | None = None
    scaling_source: str | None = None
    nested: bool = False        # its base is itself adapted (wrapped or patched twice)
    layer_type: str = "linear"  # "linear" | "embedding" | "other"

    direct_base: nn.Module | None = None  # the child it wraps (the base, or an inner wrapper)

    def tensors(self) -> list[torch.Tensor]:
        """A, B and any other parameter of the adapter module (a bias in A, a magnitude vector)."""
        out = [self.A, self.B]
        if self.owner is None:
            return out
        base_ids = {id(p) for p in self.base.parameters(recurse=False)}
        if self.direct_base is not None and self.direct_base is not self.host:
            base_ids |= {id(p) for p in self.direct_base.parameters()}
        for p in self.owner.parameters():
            if id(p) not in base_ids and all(p is not t for t in out):
                out.append(p)
        return out

    @property
    def rank(self) -> int:
        return int(self.A.shape[1] if self.transposed else self.A.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.A.shape[0] if self.transposed else self.A.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.B.shape[1] if self.transposed else self.B.shape[0])

    @property
    def registered(self) -> bool:
        return self.A_name is not None and self.B_name is not None

    def a_matrix(self) -> torch.Tensor:
        """(r, in)"""
        return self.A.t() if self.transposed else self.A

    def b_matrix(self) -> torch.Tensor:
        """(out, r)"""
        return self.B.t() if self.transposed else self.B

    def set_factors(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Write (r, in) / (out, r) values into the stored factors, in place (no_grad)."""
        with torch.no_grad():
            self.A.copy_(a.t() if self.transposed else a)
            self.B.copy_(b.t() if self.transposed else b)

    def base_weight(self) -> torch.Tensor:
        """(out, in): an embedding's (num_embeddings, dim) weight is seen transposed, as its
        adapter maps one-hot ids (in = num_embeddings) to vectors (out = dim)."""
        if self.layer_type == "embedding":
            return self.base.weight.t()
        w = linear_weight(self.base)
        if w is None:
            raise TypeError(f"{self.name}: {type(self.base).__name__} has no (out, in) weight")
        return w

    def base_bias(self) -> torch.Tensor | None:
        return getattr(self.base, "bias", None)

    @property
    def kind(self) -> str:
        return kind_of(self.name)

    @property
    def layer(self) -> int | None:
        return layer_of(self.name)

    def short(self) -> str:
        return f"{self.name} (r={self.rank})"


@dataclass
class Discovery:
    """Every adapter in a model, and every linear layer it could have adapted."""

    adapters: list[Adapter]
    # canonical name -> base linear layer (the adapters' bases included)
    linears: dict[str, nn.Module]
    module_names: dict[int, str]       # id(module) -> name in the adapted model
    class_patched: list[dict] = field(default_factory=list)
    factor_ids: set[int] = field(default_factory=set)

    def by_name(self) -> dict[str, Adapter]:
        return {a.name: a for a in self.adapters}

    def adapter_param_ids(self) -> set[int]:
        """A, B and the adapter modules' other parameters (not the base layer's)."""
        return {id(t) for a in self.adapters for t in a.tensors()}

    def name_of(self, module: Any) -> str | None:
        return self.module_names.get(id(module))


# --- discovery ---------------------------------------------------------------------------


def discover(model: nn.Module) -> Discovery:
    """Find every adapter in `model` (see the module docstring for the shapes recognised)."""
    names: dict[int, str] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        names.setdefault(id(m), n)
    adapters: list[Adapter] = []
    claimed: set[int] = set()  # modules inside a found adapter host

    peft_layer = _peft_lora_layer()
    for n, m in model.named_modules():
        if peft_layer is not None and isinstance(m, peft_layer):
            adapters.extend(_from_peft(n, m, names))
            claimed.update(id(x) for x in m.modules())

    direct_bases: dict[int, nn.Module] = {}  # id(adapter) -> the child it wraps
    for n, m in model.named_modules():
        if id(m) in claimed:
            continue
        found = _from_host(n, m, names)
        if found is None:
            continue
        adapter, direct_base = found
        adapter.direct_base = direct_base
        adapters.append(adapter)
        direct_bases[id(adapter)] = direct_base
        inside = set() if direct_base is m else {id(x) for x in direct_base.modules()}
        claimed.update(id(x) for x in m.modules() if id(x) not in inside)

    # Linears whose patched forward holds an adapter the model never registered.
    registered_hosts = {id(a.host) for a in adapters}
    for n, m in model.named_modules():
        if id(m) in claimed or id(m) in registered_hosts or not is_linear(m):
            continue
        found = _unregistered(n, m, names)
        if found is not None:
            adapters.append(found)

    # A wrapper around a wrapper (or PEFT over a hand-written adapter): both adapt one layer,
    # so the inner one takes the outer one's name, and the outer one is marked nested.
    by_host = {id(a.host): a for a in adapters}
    for a in adapters:
        inner = by_host.get(id(direct_bases.get(id(a))))
        if inner is not None and inner is not a:
            inner.name = a.name
            a.nested = True

    factor_modules = {id(x) for a in adapters for x in _factor_modules(a)}
    bases = {id(a.base): a for a in adapters}
    linears: dict[str, nn.Module] = {}
    for n, m in model.named_modules():
        if not is_linear(m) or id(m) in factor_modules:
            continue
        if id(m) in bases:
            linears.setdefault(bases[id(m)].name, m)
        else:
            linears.setdefault(canonical(n), m)
    factor_ids = {id(t) for a in adapters for t in (a.A, a.B)}
    return Discovery(adapters, linears, names, class_patched(model), factor_ids)


def _peft_lora_layer():
    # A model can only hold PEFT layers if peft was imported; importing it here just to look
    # would cost seconds on every run.
    if "peft" not in sys.modules:
        return None
    try:
        from peft.tuners.lora import LoraLayer
    except Exception:  # noqa: BLE001 - peft is optional
        return None
    return LoraLayer


def _from_peft(name: str, m: nn.Module, names: dict[int, str]) -> Iterator[Adapter]:
    base = m.get_base_layer()
    active = list(getattr(m, "active_adapters", None) or [])
    for key in active:
        if key in getattr(m, "lora_A", {}):
            A, B = m.lora_A[key].weight, m.lora_B[key].weight
            transposed, layer_type = False, "linear" if is_linear(base) else "other"
            a_name, b_name = f"{name}.lora_A.{key}.weight", f"{name}.lora_B.{key}.weight"
        elif key in getattr(m, "lora_embedding_A", {}):
            # Embedding LoRA: A (r, num_embeddings), B (dim, r); applied as B @ A[:, ids].
            A, B = m.lora_embedding_A[key], m.lora_embedding_B[key]
            transposed, layer_type = False, "embedding"
            a_name, b_name = f"{name}.lora_embedding_A.{key}", f"{name}.lora_embedding_B.{key}"
        else:
            continue
        scaling = m.scaling.get(key) if isinstance(getattr(m, "scaling", None), dict) else None
        yield Adapter(canonical(name), name, m, base, names.get(id(base), f"{name}.base_layer"),
                      A, B, a_name, b_name, transposed, "peft", owner=m, owner_name=name,
                      declared_scaling=_number(scaling), scaling_source=f"scaling[{key!r}]",
                      layer_type=layer_type, direct_base=base)


def _from_host(name: str, host: nn.Module, names: dict[int, str]):
    """A hand-written adapter hosted by `host`: the Linear itself, or a wrapper around one."""
    if is_linear(host):
        candidates = [(name, host)]
    else:
        children = [(f"{name}.{c}" if name else c, child, c)
                    for c, child in host.named_children() if _linear_or_host(child)]
        if not children:
            return None
        named = [(n, ch) for n, ch, c in children if c in BASE_CHILD_NAMES]
        rest = sorted(((n, ch) for n, ch, c in children if c not in BASE_CHILD_NAMES),
                      key=lambda x: -_size(x[1]))
        candidates = named + rest
    for base_name, base in candidates:
        out_in = _out_in(base)
        if out_in is None:
            continue
        pair = _pair(host, base, out_in, names, prefix=name)
        if pair is None:
            continue
        (a_name, A), (b_name, B), transposed = pair
        owner = _owner(host, a_name, prefix=name)
        style = "attached" if base is host else "wrapper"
        scaling, source = _scaling(host, owner, A, transposed)
        true_base = _innermost_linear(base)
        adapter = Adapter(name, name, host, true_base, names.get(id(true_base), base_name), A, B,
                          a_name, b_name, transposed, style, owner=owner,
                          owner_name=names.get(id(owner)) if owner is not None else None,
                          declared_scaling=scaling, scaling_source=source,
                          nested=true_base is not base)
        return adapter, base
    return None


def _linear_or_host(m: nn.Module) -> bool:
    return is_linear(m) or any(is_linear(x) for x in m.modules())


def _innermost_linear(m: nn.Module) -> nn.Module:
    """The real linear under a chain of wrappers (`wrapper.base.base...`)."""
    seen = 0
    while not is_linear(m) and seen < 8:
        inner = None
        for c in BASE_CHILD_NAMES:
            child = getattr(m, c, None)
            if isinstance(child, nn.Module):
                inner = child
                break
        if inner is None:
            break
        m, seen = inner, seen + 1
    return m


def _out_in(m: nn.Module) -> tuple[int, int] | None:
    shape = linear_shape(_innermost_linear(m))
    return (int(shape[0]), int(shape[1])) if shape is not None else None


def _size(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _pair(host: nn.Module, base: nn.Module, out_in: tuple[int, int], names, prefix: str):
    """The (A, B) pair among `host`'s parameters outside `base`, or None.

    Only a host whose extra parameters are exactly one pair (plus small 0/1-D extras such as
    a magnitude vector) counts, so an attention block with several linears is never mistaken
    for a wrapper.
    """
    own = (getattr(host, "weight", None), getattr(host, "bias", None))
    base_params = {id(p) for p in base.parameters()} if base is not host else \
        {id(p) for p in own if p is not None}
    extra = []
    for pname, p in host.named_parameters():
        if id(p) in base_params:
            continue
        if p.dim() == 2:
            extra.append((f"{prefix}.{pname}" if prefix else pname, p))
        elif p.numel() > max(out_in):
            return None
    if len(extra) != 2:
        return None
    return _orient(extra, out_in)


def _orient(extra, out_in):
    out_f, in_f = out_in
    (n1, p1), (n2, p2) = extra
    options = []
    for (an, a), (bn, b) in (((n1, p1), (n2, p2)), ((n2, p2), (n1, p1))):
        r = a.shape[0]
        if a.shape == (r, in_f) and b.shape == (out_f, r) and r <= min(in_f, out_f):
            options.append(((an, a), (bn, b), False))
        r = a.shape[1]
        if a.shape == (in_f, r) and b.shape == (r, out_f) and r <= min(in_f, out_f):
            options.append(((an, a), (bn, b), True))
    if not options:
        return None
    if len(options) == 1:
        return options[0]
    # A square layer fits more than one reading: the names decide, else (r, in) / (out, r).
    for opt in options:
        (an, _), (bn, _), _t = opt
        if _side(an) == "A" and _side(bn) == "B":
            return opt
    for opt in options:
        if not opt[2]:
            return opt
    return options[0]


def _side(qualified: str) -> str | None:
    parts = [p.lower() for p in qualified.split(".") if p not in ("weight", "default")]
    for part in reversed(parts):
        if part in _A_WORDS or part.endswith("_a") or part.endswith("down"):
            return "A"
        if part in _B_WORDS or part.endswith("_b") or part.endswith("up"):
            return "B"
    return None


def _owner(host: nn.Module, a_name: str, prefix: str) -> nn.Module | None:
    """The adapter module (e.g. `module.lora`) holding A: the child of the host on A's path."""
    rel = a_name[len(prefix) + 1:] if prefix and a_name.startswith(prefix + ".") else a_name
    parts = rel.split(".")
    if len(parts) < 2:
        return host
    child = getattr(host, parts[0], None)
    if isinstance(child, nn.Module) and len(parts) > 2:
        return child  # module.lora.A.weight -> module.lora
    return host  # module.lora_A.weight -> the wrapper itself


def _scaling(host, owner, A, transposed) -> tuple[float | None, str | None]:
    """The scaling a module declares: `scaling`/`scale`, else `alpha / r` from its attributes."""
    rank = int(A.shape[1] if transposed else A.shape[0])
    for m in [x for x in (owner, host) if x is not None]:
        for attr in ("scaling", "scale", "lora_scaling"):
            v = _number(getattr(m, attr, None))
            if v is not None:
                return v, attr
    for m in [x for x in (owner, host) if x is not None]:
        for attr in ("alpha", "lora_alpha"):
            alpha = _number(getattr(m, attr, None))
            if alpha is not None:
                r = _number(getattr(m, "rank", None) or getattr(m, "r", None)) or rank
                return (alpha / r if r else None), f"{attr} / r"
    return None, None


def _number(v: Any) -> float | None:
    if isinstance(v, dict):
        v = next(iter(v.values()), None) if len(v) == 1 else None
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return float(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None


def _factor_modules(a: Adapter) -> list[nn.Module]:
    """Submodules holding A or B (e.g. `lora.A`, `lora_B`), so coverage does not count them."""
    out = []
    if a.owner is None:
        return out
    for m in a.owner.modules():
        if m is a.base:
            continue
        if any(p is a.A or p is a.B for p in m.parameters(recurse=False)):
            out.append(m)
    return out


def _unregistered(name: str, m: nn.Module, names) -> Adapter | None:
    """A pair reachable only from `m`'s patched forward (closure, defaults, partial)."""
    refs = forward_refs(m)
    if refs is None:
        return None
    out_in = _out_in(m)
    for via, obj in refs.uses:
        if id(obj) in names:
            continue  # registered somewhere in the model: not this case
        params = [(f"<{via}>.{pn}", p) for pn, p in obj.named_parameters() if p.dim() == 2]
        if len(params) != 2:
            continue
        pair = _orient(params, out_in)
        if pair is None:
            continue
        (a_name, A), (b_name, B), transposed = pair
        scaling, source = _scaling(None, obj, A, transposed)
        return Adapter(name, name, m, m, name, A, B, None, None, transposed, "unregistered",
                       owner=obj, owner_name=f"<{via}>", declared_scaling=scaling,
                       scaling_source=source)
    return None

