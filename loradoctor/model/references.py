"""What a patched forward holds on to, read from the code without calling it.

A user's `module.forward = f` keeps other objects alive through `f`'s closure cells, default
arguments, `functools.partial` arguments and bound methods. `forward_refs` collects the
modules (and modules' forwards) it holds; `other_layers_held` names, for one adapter, the
other layers whose forward or adapter its patched forward holds (LD201's static evidence);
`reads` says whether the code really reads such a reference, and `unreachable` whether an
adapter can take part in its layer's output at all (LD204 in static mode). Classes whose
`forward` was replaced from outside the class body are found here too (LD202). Discovery, the
per-layer probe and static mode all read this; it imports nothing else of the model's.
"""

from __future__ import annotations

import builtins
import dis
import functools
import inspect
import types
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .layer_names import canonical


@dataclass
class ForwardRefs:
    """What a module's instance-level `forward` holds on to, found without calling it."""

    function: Any
    calls: list[tuple[str, nn.Module]] = field(default_factory=list)  # bound forwards (via, module)
    uses: list[tuple[str, nn.Module]] = field(default_factory=list)   # modules held (via, module)
    levels: int = 0          # nested patched functions that each hold a module
    names_forward: bool = False  # the code looks up `.forward` at call time (recursion risk)
    holds_self: bool = False

    def describe(self) -> str:
        fn = self.function
        if isinstance(fn, functools.partial):
            return f"functools.partial({getattr(fn.func, '__qualname__', fn.func)}, ...)"
        return getattr(fn, "__qualname__", type(fn).__name__)


def forward_refs(module: nn.Module) -> ForwardRefs | None:
    """The references of `module.__dict__['forward']`, or None when forward is not patched."""
    fn = module.__dict__.get("forward")
    if fn is None or _accelerate_hook(fn) is module:
        return None  # accelerate's offload hook (device_map="auto") is not the user's patch
    refs = ForwardRefs(fn)
    _walk(fn, "forward", 0, set(), refs, module)
    return refs


def _walk(obj: Any, via: str, depth: int, seen: set[int], refs: ForwardRefs, host) -> bool:
    """Record what `obj` holds; True when it (transitively) holds a module or a module's method."""
    if depth > 6 or id(obj) in seen:
        return False
    seen.add(id(obj))
    if isinstance(obj, nn.Module):
        refs.uses.append((via, obj))
        if obj is host:
            refs.holds_self = True
        return True
    if inspect.ismethod(obj):
        if isinstance(obj.__self__, nn.Module):
            refs.calls.append((via, obj.__self__))
            return True
        return _walk(obj.__func__, via, depth + 1, seen, refs, host)
    hooked = _accelerate_hook(obj)
    if hooked is not None:  # accelerate's hooked forward of a module: that module's forward
        refs.calls.append((via, hooked))
        return True
    if isinstance(obj, functools.partial):
        direct = False
        for i, arg in enumerate(obj.args):
            direct |= _walk(arg, f"partial argument {i}", depth + 1, seen, refs, host)
        for key, value in obj.keywords.items():
            direct |= _walk(value, f"partial argument {key}", depth + 1, seen, refs, host)
        _walk(obj.func, via, depth + 1, seen, refs, host)
        if direct:
            refs.levels += 1
        return direct
    if inspect.isfunction(obj):
        code = obj.__code__
        items: list[tuple[str, Any]] = []
        for var, cell in zip(code.co_freevars, obj.__closure__ or ()):
            try:
                items.append((f"closure variable {var}", cell.cell_contents))
            except ValueError:  # an empty cell
                continue
        if obj.__defaults__:
            positional = code.co_varnames[:code.co_argcount]
            for var, value in zip(positional[-len(obj.__defaults__):], obj.__defaults__):
                items.append((f"default argument {var}", value))
        for var, value in (obj.__kwdefaults__ or {}).items():
            items.append((f"default argument {var}", value))
        holds = False
        direct = False
        for item_via, value in items:
            is_direct = isinstance(value, nn.Module) or (
                inspect.ismethod(value) and isinstance(value.__self__, nn.Module))
            got = _walk(value, item_via, depth + 1, seen, refs, host)
            holds |= got
            direct |= is_direct and got
        if direct:
            refs.levels += 1
        if "forward" in code.co_names:
            refs.names_forward = True
        return holds
    return False


def _accelerate_hook(obj: Any) -> nn.Module | None:
    """The module whose forward `obj` is when `obj` is accelerate's hooked forward
    (`functools.partial(new_forward, module)`, set by `add_hook_to_module`), else None."""
    if isinstance(obj, functools.partial) and obj.args and isinstance(obj.args[0], nn.Module) \
            and (getattr(obj.func, "__module__", "") or "").startswith("accelerate."):
        return obj.args[0]
    return None


def class_patched(model: nn.Module) -> list[dict]:
    """Classes in the model whose `forward` was assigned from outside the class body.

    A method defined in a class body has `__qualname__ == f"{Class.__qualname__}.forward"`;
    `nn.Linear.forward = forward_with_lora` leaves the user's function there instead, and
    every instance of the class (in every model in the process) runs it.
    """
    seen: dict[type, dict] = {}
    for name, m in model.named_modules():
        cls = type(m)
        if cls in seen:
            seen[cls]["instances"] += 1
            continue
        info = None
        for klass in cls.__mro__:
            fn = klass.__dict__.get("forward")
            if fn is None:
                continue
            qual = getattr(fn, "__qualname__", "")
            if inspect.isfunction(fn) and qual != f"{klass.__qualname__}.forward" \
                    and fn.__name__ != "_forward_unimplemented" \
                    and getattr(fn, "__module__", None) != klass.__module__:
                info = {"class": f"{klass.__module__}.{klass.__qualname__}",
                        "function": qual, "file": fn.__code__.co_filename,
                        "line": fn.__code__.co_firstlineno, "instances": 1, "first": name}
            break
        seen[cls] = info or {"instances": 1, "ok": True}
    return [v for v in seen.values() if not v.get("ok")]


def owner_index(disc) -> dict[int, Any]:
    """id(module) -> the adapter it belongs to (host, base, adapter module and its parts)."""
    index: dict[int, Any] = {}
    for a in disc.adapters:
        for m in (a.host, a.base):
            index.setdefault(id(m), a)
        if a.owner is not None and a.owner is not a.host:
            for m in a.owner.modules():
                index.setdefault(id(m), a)
    return index


def other_layers_held(a, disc, owners: dict[int, Any]) -> tuple[ForwardRefs | None,
                                                                 list[tuple[str, str, str]]]:
    """What the adapter `a`'s patched forward holds (None: not patched), and the other layers
    among it as (via, kind, name): kind "forward" for a layer's forward or weight, "adapter"
    for its adapter. `owners` is `owner_index(disc)`."""
    refs = forward_refs(a.host)
    if refs is None:
        return None, []
    held: list[tuple[str, str, str]] = []
    own = {id(m) for m in a.host.modules()} | {id(a.base)}
    if a.owner is not None:
        own |= {id(m) for m in a.owner.modules()}
    for via, m in refs.calls:
        if id(m) in own:
            continue
        other = owners.get(id(m))
        name = other.name if other is not None else canonical(disc.name_of(m) or type(m).__name__)
        if name != a.name:
            held.append((via, "forward", name))
    for via, m in refs.uses:
        if id(m) in own:
            continue
        other = owners.get(id(m))
        if other is not None and other.name != a.name:
            kind = "forward" if (m is other.host or m is other.base) else "adapter"
            held.append((via, kind, other.name))
    return refs, held


def reads(fn: Any, via: str) -> bool:
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


def unreachable(a) -> bool:
    """The adapter cannot take part in its layer's output, judged from the code alone:
    attached to a layer whose forward is the library's own (never patched), or held by a
    patched forward that neither holds it nor holds the layer it could look it up on."""
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
    held = [(via, m) for via, m in [*refs.uses, *refs.calls] if reads(fn, via)]
    parts = {id(m) for m in a.owner.modules()} if a.owner is not None else set()
    parts.discard(id(host))
    if any(id(m) in parts for _, m in held):
        return False
    # Holding some other module of the user's, it may add the adapter through it: unknown.
    return all(m is host or type(m) is nn.Linear for _, m in held)


def _reads_globals(fn: Any) -> bool:
    """The code reads a global that may hold adapters (a dict, a list, a module instance):
    anything but an imported module, a class or a builtin."""
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
