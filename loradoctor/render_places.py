"""Where a finding is, as a file: the places the GitHub and SARIF renderers point at.

A finding's `location` is `file:line` for data and the user's code (`fixtures/data/persona.jsonl:1`,
`minimind_dataset.py:25`), a file (a saved adapter's weights), `file:field`
(`adapter_config.json:r`), a module path for model findings (`model.layers.0.self_attn.q_proj`),
a step, or None. Only a file that exists is a place: a name is looked up as given (absolute, or
relative to the working directory), then among the paths the run was given (its data, its
SPEC files, the folders it read) and the user's modules it imported. A place's path is written
relative to the repository (`GITHUB_WORKSPACE`, else the git checkout around the working
directory, else the working directory), as GitHub's annotations and SARIF's artifact URIs want.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .findings import Finding
from .inputs import options

# `rank 1: ` is how a distributed run names the rank a finding came from (distributed.py).
_RANK = re.compile(r"^rank \d+: ")
_WITH_LINE = re.compile(r"^(?P<name>.+?):(?P<line>\d+)$")
_WITH_FIELD = re.compile(r"^(?P<name>.+?\.\w+):(?P<field>[A-Za-z_][\w.]*)$")
_MAX_GLOB = 1000  # a data glob's files looked at for a place


@dataclass(frozen=True)
class Place:
    """A file (relative to the repository when inside it, else absolute; `/` separators) and a
    1-based line, when known."""

    path: str
    line: int | None = None
    inside: bool = True  # within the repository root: `path` is relative to it
    end_line: int | None = None  # the last of consecutive lines the finding names from `line`


class Places:
    """Finds the file place of a finding's location among the paths a run was given."""

    def __init__(self, sources: Iterable[str | Path] = (), root: str | Path | None = None):
        self.root = Path(root).resolve() if root is not None else repository_root()
        self.sources = [Path(s) for s in sources]
        self._modules: list[Path] | None = None

    def of_finding(self, finding: Finding) -> Place | None:
        """The finding's place; a data finding naming consecutive lines from its first
        (`evidence["lines"]`: 1, 2, 3, ...) spans them. The lines are the data's, so a place in
        code (`.py`) never spans."""
        place = self.of(finding.location)
        lines = finding.evidence.get("lines") if isinstance(finding.evidence, dict) else None
        if place is None or place.line is None or place.path.endswith(".py") \
                or not isinstance(lines, list) or not lines or lines[0] != place.line:
            return place
        end = place.line
        for n in lines[1:]:
            if n != end + 1:
                break
            end = n
        return replace(place, end_line=end) if end > place.line else place

    def fallback(self) -> Place | None:
        """Where a finding without a file of its own (a model's module, a training step) is
        anchored, since GitHub code scanning rejects a whole SARIF file when one result has no
        file: the user's code the run was given (a SPEC's `.py`), else its data file, else a
        model directory's `config.json`, else the repository's `pyproject.toml`."""
        files = [s for s in self.sources if s.is_file()]
        candidates = [*[f for f in files if f.suffix == ".py"], *files,
                      *[s / "config.json" for s in self.sources if s.is_dir()],
                      self.root / "pyproject.toml"]
        for candidate in candidates:
            if candidate.is_file():
                found = candidate.resolve()
                try:
                    return Place(found.relative_to(self.root).as_posix(), 1)
                except ValueError:
                    return Place(found.as_posix(), 1, inside=False)
        return None

    def of(self, location: str | None) -> Place | None:
        """The place a location names, or None when it is not an existing file."""
        if not location:
            return None
        text = _RANK.sub("", location.strip())
        line = None
        if m := _WITH_LINE.match(text):
            text, line = m["name"], int(m["line"])
        elif m := _WITH_FIELD.match(text):
            text = m["name"]
        found = self._find(text)
        if found is None:
            return None
        try:
            return Place(found.relative_to(self.root).as_posix(), line)
        except ValueError:
            return Place(found.as_posix(), line, inside=False)

    def _find(self, name: str) -> Path | None:
        given = Path(name)
        if given.is_absolute() or os.sep in name or "/" in name:
            return given.resolve() if given.is_file() else None
        if given.is_file():
            return given.resolve()
        matches = []
        for source in self.sources:
            candidate = source / name if source.is_dir() else source
            if candidate.name == name and candidate.is_file():
                matches.append(candidate.resolve())
        if not matches and name.endswith(".py"):
            matches = [p for p in self._user_modules() if p.name == name]
        unique = sorted(set(matches))
        return unique[0] if len(unique) == 1 else None  # two files of that name: no guess

    def _user_modules(self) -> list[Path]:
        """The imported modules' files inside the repository, outside installed packages: the
        user's own code that a SPEC file imported (looked up once)."""
        if self._modules is not None:
            return self._modules
        out = []
        for module in list(sys.modules.values()):
            file = getattr(module, "__file__", None)
            if not file or "site-packages" in file or "dist-packages" in file:
                continue
            path = Path(file).resolve()
            if path.is_relative_to(self.root) and not path.is_relative_to(_PACKAGE):
                out.append(path)
        self._modules = out
        return out


_PACKAGE = Path(__file__).resolve().parent


def repository_root(start: str | Path | None = None) -> Path:
    """`GITHUB_WORKSPACE` when the working directory is inside it, else the nearest folder up
    from `start` (the working directory) holding `.git`, else the working directory."""
    here = Path(start or os.getcwd()).resolve()
    workspace = os.environ.get("GITHUB_WORKSPACE")
    if workspace and here.is_relative_to(Path(workspace).resolve()):
        return Path(workspace).resolve()
    for folder in (here, *here.parents):
        if (folder / ".git").exists():
            return folder
    return here


def run_sources(inputs: dict[str, Any]) -> list[Path]:
    """The files and folders a run was given: `prepare()`'s keywords of kind path, SPEC or
    target, as files (a SPEC's `file.py`, or the module it names once imported; a glob's
    matches)."""
    out: list[Path] = []
    for option in options.OPTIONS:
        value = inputs.get(option.api_arg)
        if isinstance(value, str) and option.kind in ("path", "spec", "target"):
            out.extend(_paths_of(value))
    return out


def _paths_of(value: str) -> list[Path]:
    target, _, name = value.rpartition(":")
    if target and name.isidentifier():
        if target.endswith(".py"):
            return [Path(target)]
        module = sys.modules.get(target)
        file = getattr(module, "__file__", None)
        return [Path(file)] if file else []
    if glob.has_magic(value):
        return [Path(p) for p in sorted(glob.glob(value, recursive=True))[:_MAX_GLOB]]
    return [Path(value)]
