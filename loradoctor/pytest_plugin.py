"""The pytest plugin (registered through the `pytest11` entry point): a pipeline's health in CI.

`pytest --loradoctor` reads the `[tool.loradoctor]` table of the project's `pyproject.toml`
(keys named like the CLI's long options; paths relative to that file), prepares the run once
per session and collects one test item per rule, `loradoctor::LD101::no-supervised-tokens`.
The measurements are made once, on the first item that runs, and shared. A failing item's text
is that rule's part of the doctor view (message, evidence, token view, fix); a skipped rule is
a pytest skip with its reason; a warning passes with a pytest warning, or fails under
`--loradoctor-strict`. The `loradoctor_report` fixture gives any test the Report.

Without `--loradoctor` nothing is collected and nothing heavy is imported: this module needs
only the standard library until a check runs (torch and transformers load then).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

TABLE = "tool.loradoctor"

STRICT = "strict"  # the one key of the plugin's own: warnings fail (= --loradoctor-strict)


class LoradoctorWarning(UserWarning):
    """A rule's warning finding (an item that passes with this warning unless strict)."""


class _Failed(Exception):
    """A rule failed: the message is its part of the doctor view, shown without a traceback."""


# --- options --------------------------------------------------------------------------------


def pytest_addoption(parser):
    group = parser.getgroup("loradoctor", "loradoctor pre-training checks")
    group.addoption("--loradoctor", action="store_true", default=False,
                    help="check the pipeline configured in [tool.loradoctor] of pyproject.toml, "
                         "one test item per rule")
    group.addoption("--loradoctor-config", default=None, metavar="PYPROJECT",
                    help="the pyproject.toml holding [tool.loradoctor] (default: found from "
                         "the rootdir or the current directory upwards)")
    group.addoption("--loradoctor-strict", action="store_true", default=None,
                    help="warning findings fail their item too")
    from .inputs.options import OPTIONS
    for o in OPTIONS:
        flag, dest = f"--loradoctor-{o.name}", "loradoctor_" + o.dest
        if o.kind == "bool":
            group.addoption(flag, action="store_true", default=None, dest=dest,
                            help=f"override [tool.loradoctor] {o.key} = true")
        elif o.kind in ("pairs", "peft"):
            group.addoption(flag, action="append", default=None, dest=dest,
                            metavar="KEY=VALUE[,...]",
                            help=f"override entries of [tool.loradoctor] {o.key} (repeatable)")
        else:
            group.addoption(flag, default=None, dest=dest,
                            metavar=o.key.upper().replace("-", "_"),
                            help=f"override [tool.loradoctor] {o.key}"
                                 + (" (comma-separated)" if o.kind in ("codes", "list") else ""))


# --- configuration --------------------------------------------------------------------------


@dataclass
class Settings:
    """The run's keyword arguments for `loradoctor.api.prepare`, and where they came from."""

    pyproject: Path | None
    kwargs: dict[str, Any] = field(default_factory=dict)
    strict: bool = False

    def describe(self) -> str:
        from .inputs.options import OPTIONS
        shown = []
        for o in OPTIONS:
            if o.api_arg in self.kwargs:
                value = self.kwargs[o.api_arg]
                if o.kind in ("path", "spec", "target") and isinstance(value, str):
                    value = _relative(value, self.pyproject)
                shown.append(f"{o.key} {value}")
        where = f"{self.pyproject} [{TABLE}]" if self.pyproject else "the command line"
        return f"{', '.join(shown) or 'nothing configured'} (from {where}" \
               f"{', strict' if self.strict else ''})"


def find_pyproject(config) -> Path | None:
    """`--loradoctor-config`, else the first pyproject.toml with [tool.loradoctor] upwards."""
    given = config.getoption("loradoctor_config")
    if given:
        path = Path(given)
        if not path.is_file():
            raise pytest.UsageError(f"--loradoctor-config {given}: no such file")
        return path.resolve()
    starts = [Path(config.invocation_params.dir), Path(config.rootpath)]
    for start in starts:
        for folder in [start, *start.parents]:
            candidate = folder / "pyproject.toml"
            if candidate.is_file() and _table(candidate) is not None:
                return candidate.resolve()
    return None


def _load_toml(path: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10: pytest itself depends on tomli there
        import tomli as tomllib
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, ValueError) as exc:
        raise pytest.UsageError(f"{path}: cannot be read as TOML: {exc}") from None


def _table(path: Path) -> dict | None:
    data = _load_toml(path)
    table = data.get("tool", {}).get("loradoctor")
    if table is not None and not isinstance(table, dict):
        raise pytest.UsageError(f"{path}: [{TABLE}] must be a table")
    return table


def read_settings(config) -> Settings:
    """The configuration: the pyproject table, then `--loradoctor-*` overrides, validated."""
    from .errors import InputError
    from .inputs.options import BY_KEY, OPTIONS, from_config, from_override

    path = find_pyproject(config)
    table = _table(path) if path is not None else {}
    kwargs: dict[str, Any] = {}
    strict = False
    where = f"{path} [{TABLE}]" if path else f"[{TABLE}]"
    base = path.parent if path else Path.cwd()
    try:
        for key, value in (table or {}).items():
            if key == STRICT:
                if not isinstance(value, bool):
                    raise InputError(f"{where}: key {key!r} must be true or false, got "
                                     f"{value!r} ({type(value).__name__})")
                strict = value
            elif key in BY_KEY:
                kwargs[BY_KEY[key].api_arg] = from_config(BY_KEY[key], value, base, where)
            else:
                import difflib
                known = [*BY_KEY, STRICT]
                close = difflib.get_close_matches(key.replace("_", "-"), known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else \
                    f" (known keys: {', '.join(known)})"
                raise InputError(f"{where}: unknown key {key!r}{hint}")
        # Command-line overrides: paths relative to the directory pytest was started in.
        here = Path(config.invocation_params.dir)
        for o in OPTIONS:
            given = config.getoption("loradoctor_" + o.dest)
            if given is None:
                continue
            value = from_override(o, given, here)
            if o.kind in ("pairs", "peft") and isinstance(kwargs.get(o.api_arg), dict):
                value = {**kwargs[o.api_arg], **value}
            kwargs[o.api_arg] = value
    except InputError as exc:
        raise pytest.UsageError(str(exc)) from None
    if config.getoption("loradoctor_strict"):
        strict = True
    return Settings(path, kwargs, strict)


def _relative(value: str, pyproject: Path | None) -> str:
    if pyproject is None:
        return value
    try:
        rel = os.path.relpath(value, pyproject.parent)
    except ValueError:
        return value
    return value if rel.startswith("..") else rel  # outside the project: the whole path


# --- the run, prepared and executed once per session ---------------------------------------


class LoradoctorRun:
    """The configured pipeline: prepared at collection, executed on first use, kept."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._run = None
        self._report = None
        self._error: str | None = None

    def prepare(self):
        if self._run is None:
            from . import api
            from .errors import InputError
            try:
                self._run = api.prepare(**self.settings.kwargs)
            except InputError as exc:
                where = f" (configured in {self.settings.pyproject} [{TABLE}])" \
                    if self.settings.pyproject else ""
                raise pytest.UsageError(f"loradoctor: {exc}{where}") from None
        return self._run

    def report(self):
        """The Report (computed on the first call); raises `_Failed` when the run could not."""
        if self._error is not None:
            raise _Failed(self._error)
        if self._report is None:
            from .errors import InputError
            try:
                self._report = self.prepare().execute()
            except InputError as exc:
                self._error = f"loradoctor could not run the configured pipeline: {exc}"
                raise _Failed(self._error) from None
        return self._report


_RUN_KEY = pytest.StashKey["LoradoctorRun"]()


def _state(config) -> LoradoctorRun:
    if _RUN_KEY not in config.stash:
        config.stash[_RUN_KEY] = LoradoctorRun(read_settings(config))
    return config.stash[_RUN_KEY]


def pytest_configure(config):
    if config.getoption("loradoctor"):
        _state(config)  # a misconfigured table is a usage error before anything is collected


def pytest_report_header(config):
    if config.getoption("loradoctor"):
        return f"loradoctor: checking {_state(config).settings.describe()}"
    return None


@pytest.hookimpl(tryfirst=True)  # before -k / -m / --deselect filter the items
def pytest_collection_modifyitems(session, config, items):
    if not config.getoption("loradoctor"):
        return
    state = _state(config)
    if not state.settings.kwargs:
        raise pytest.UsageError("--loradoctor: nothing to check; add a [tool.loradoctor] table "
                                "to pyproject.toml (data, tokenizer, dataset, model, ...)")
    run = state.prepare()
    parent = LoradoctorCollector.from_parent(session, name="loradoctor", nodeid="loradoctor")
    ours = [LoradoctorItem.from_parent(parent, name=f"{r.code}::{r.name}", rule=r)
            for r in run.rules]
    items[:0] = ours
    # Reported as a collection like any other, so "collected N items" counts the rules.
    config.hook.pytest_collectreport(report=pytest.CollectReport(
        parent.nodeid, "passed", None, list(ours)))


class LoradoctorCollector(pytest.Collector):
    """The `loradoctor` node the rule items hang from (nothing is collected from files)."""

    def collect(self):  # pragma: no cover - the items are made in pytest_collection_modifyitems
        return []


class LoradoctorItem(pytest.Item):
    """One rule of the configured run."""

    def __init__(self, *, rule, **kwargs):
        super().__init__(**kwargs)
        self.rule = rule
        # Under pytest-xdist with `--dist loadfile` (all items hang from one node), or
        # `--dist loadgroup` where xdist's groups work (not with pytest 9.2), every rule goes
        # to the same worker, so the run is measured once; other modes measure it once per
        # worker that gets a rule.
        if self.config.pluginmanager.hasplugin("xdist"):
            self.add_marker(pytest.mark.xdist_group("loradoctor"))

    def runtest(self):
        from .findings import Status
        from .render import result_text

        state = _state(self.config)
        report = state.report()
        result = next((r for r in report.results if r.code == self.rule.code), None)
        if result is None:
            pytest.skip(f"{self.rule.code} did not run")
        verbose = self.config.getoption("verbose") > 0
        if result.status is Status.SKIP:
            _skip(f"{result.code}: {result.summary or 'not applicable'}")
        if result.status in (Status.FAIL, Status.CRASH):
            raise _Failed(result_text(result, traceback=verbose))
        if result.status is Status.WARN:
            if state.settings.strict:
                raise _Failed(result_text(result, traceback=verbose))
            import warnings
            # The warnings summary gets the findings; the views are for a failing item.
            text = result_text(result, evidence=False, views=False)
            warnings.warn(LoradoctorWarning(text), stacklevel=1)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, _Failed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        where = self.config.stash[_RUN_KEY].settings.pyproject if _RUN_KEY in self.config.stash \
            else None
        return (where or self.path), _table_line(where), f"{self.rule.code} {self.rule.name}"


def _table_line(path: Path | None) -> int:
    """The 0-based line of `[tool.loradoctor]` in the file (where a skip or failure points)."""
    if path is None:
        return 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return 0
    return next((i for i, line in enumerate(lines) if line.strip() == f"[{TABLE}]"), 0)


def _skip(reason: str):
    """A skip reported at the item's place (the pyproject table), not at this module's line."""
    from _pytest.outcomes import Skipped
    try:
        raise Skipped(reason, _use_item_location=True)
    except TypeError:  # pragma: no cover - a pytest without the keyword
        pytest.skip(reason)


@pytest.fixture(scope="session")
def loradoctor_report(request):
    """The Report of the pipeline configured in [tool.loradoctor], computed once per session."""
    state = _state(request.config)
    if not state.settings.kwargs:
        pytest.fail("loradoctor_report: no [tool.loradoctor] table in pyproject.toml (and no "
                    "--loradoctor-* options)", pytrace=False)
    try:
        return state.report()
    except _Failed as exc:
        pytest.fail(str(exc), pytrace=False)
