"""`Memo`: what every context shares. Each measurement several rules read is computed once.

A context is the inputs of one command of a run, loaded lazily; `memo(key, compute)` keeps
what a rule computed (or the exception it raised) for every later rule.
"""

from __future__ import annotations

from typing import Any, Callable

from ..inputs import specs


class Memo:
    # Set by the CLI to a stderr rich Console when stderr is a terminal; checks that take a
    # while pass it to `progress.progress()` and otherwise never print.
    progress_console: Any = None

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """Compute `key` once per run; later rules get the kept value (or the same exception)."""
        cache = self.__dict__.setdefault("_memo", {})
        if key not in cache:
            try:
                cache[key] = (True, compute())
            except Exception as exc:  # noqa: BLE001 - re-raised for every rule that asks
                cache[key] = (False, exc)
        ok, value = cache[key]
        if not ok:
            raise value
        return value

    def user_code(self, given: Any, spec: str | None, key: str) -> Any | None:
        """The user's object: the live one given, else the one a SPEC names (imported once),
        else None."""
        if given is not None:
            return given
        if not spec:
            return None
        return self.memo(key, lambda: specs.load_spec(spec))

    def report_summary(self) -> dict[str, Any]:
        return dict(self.__dict__.get("summary", {}))

    def report_views(self) -> list:
        return list(self.__dict__.get("views", []))
