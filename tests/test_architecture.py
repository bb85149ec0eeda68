"""The shape of the code: imports only go down the layers, no circle, no private name taken
from another module, small modules and functions.

The layers, top to bottom (docs/architecture.md says what goes where):

    7  the package facade (`loradoctor/__init__.py`), bench/
    6  front ends: cli, __main__, pytest_plugin, watchdog, integrations/, reference/, ruledocs
    5  api, context, shards: a run's inputs become contexts and rules
    4  registry, engine, render, distributed
    3  checks/: rules only
    2  measurements, side by side: masking/ (data), model/, strategies
    1  inputs/ (what the user points at) and assets/ (generated fixtures)
    0  core: findings, rules, errors, text, progress, environment, version

Every import counts, also one inside a function: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import ROOT

LAYERS = {
    "loradoctor": 7, "bench": 7,
    "loradoctor.__main__": 6, "loradoctor.cli": 6, "loradoctor.pytest_plugin": 6,
    "loradoctor.watchdog": 6, "loradoctor.integrations": 6, "loradoctor.reference": 6,
    "loradoctor.ruledocs": 6,
    "loradoctor.api": 5, "loradoctor.context": 5, "loradoctor.shards": 5,
    "loradoctor.registry": 4, "loradoctor.engine": 4, "loradoctor.render": 4,
    "loradoctor.distributed": 4,
    "loradoctor.render_places": 4, "loradoctor.render_github": 4, "loradoctor.render_sarif": 4,
    "loradoctor.render_svg": 4, "loradoctor.render_html": 4, "loradoctor.render_output": 4,
    "loradoctor.checks": 3,
    "loradoctor.masking": 2, "loradoctor.model": 2, "loradoctor.strategies": 2,
    "loradoctor.inputs": 1, "loradoctor.assets": 1,
    "loradoctor.findings": 0, "loradoctor.rules": 0, "loradoctor.errors": 0,
    "loradoctor.text": 0, "loradoctor.progress": 0, "loradoctor.environment": 0,
    "loradoctor.version": 0,
}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


@dataclass(frozen=True)
class Import:
    source: str       # the importing module
    target: str       # the imported module
    name: str | None  # the name taken from it (`from target import name`), if any
    line: int


def modules() -> dict[str, Path]:
    found = {}
    for path in [*sorted((ROOT / "loradoctor").rglob("*.py")), *sorted((ROOT / "bench").glob("*.py"))]:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = modules()


def layer(module: str) -> int:
    """The layer of the longest prefix of `module` named in LAYERS (the facade: exactly)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS and (prefix != "loradoctor" or module == "loradoctor"):
            return LAYERS[prefix]
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if MODULES[module].name != "__init__.py":
        base = base[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _owner(name: str) -> str | None:
    """The module of ours that `name` is, or lies in (None: not ours)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> list[Import]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _owner(alias.name)
                if target and target != module:
                    found.append(Import(module, target, None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in MODULES:  # a submodule: `from . import registry`
                    found.append(Import(module, full, None, node.lineno))
                elif (target := _owner(base)) and target != module:
                    found.append(Import(module, target, alias.name, node.lineno))
    return found


ALL_IMPORTS = [imp for m in MODULES for imp in imports_of(m)]


def private_attribute_uses(module: str) -> list[tuple[int, str]]:
    """`alias._name` where `alias` is one of our modules imported whole."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in MODULES:
                    aliases[alias.asname] = alias.name
    return [(node.lineno, f"{aliases[node.value.id]}.{node.attr}")
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id in aliases and _is_private(node.attr)]


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in ALL_IMPORTS:
        edges[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    return found


def test_every_module_is_in_a_layer():
    for module in MODULES:
        layer(module)


def test_imports_only_go_down_the_layers():
    upward = [f"{MODULES[i.source].relative_to(ROOT)}:{i.line} {i.source} (layer "
              f"{layer(i.source)}) imports {i.target} (layer {layer(i.target)})"
              for i in ALL_IMPORTS if layer(i.target) > layer(i.source)]
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    assert cycles() == []


def test_no_module_takes_another_modules_private_name():
    taken = [f"{MODULES[i.source].relative_to(ROOT)}:{i.line} takes {i.target}.{i.name}"
             for i in ALL_IMPORTS if i.name and _is_private(i.name)]
    taken += [f"{MODULES[m].relative_to(ROOT)}:{line} uses {name}"
              for m in MODULES for line, name in private_attribute_uses(m)]
    assert not taken, "\n".join(taken)


def _docstring_lines(node) -> int:
    body = getattr(node, "body", None)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[0].end_lineno - body[0].lineno + 1
    return 0


def _rule_docs(tree: ast.Module) -> int:
    """Lines of rule documentation: the docstrings of functions decorated with `@rule`."""
    total = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(
                isinstance(d, ast.Call) and getattr(d.func, "id", None) == "rule"
                for d in node.decorator_list):
            total += _docstring_lines(node)
    return total


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("loradoctor")))
def test_modules_and_functions_stay_small(module):
    """No module over 500 lines (a rule module's rule documentation aside), no function over
    80 lines (its docstring aside)."""
    text = MODULES[module].read_text(encoding="utf-8")
    tree = ast.parse(text)
    lines = text.count("\n") - _rule_docs(tree)
    assert lines <= MAX_MODULE_LINES, f"{module}: {lines} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1 - _docstring_lines(node)} lines)"
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef,
                                                            ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 - _docstring_lines(node) > MAX_FUNCTION_LINES]
    assert not long, f"{module}: {', '.join(long)}"
