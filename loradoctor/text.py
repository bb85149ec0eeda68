"""Small text helpers every layer shares: an exception in one line, a capped list.

Core: imports nothing of loradoctor's, so any module may use it.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Iterable

PACKAGE_DIR = str(Path(__file__).resolve().parent)  # frames under it are ours, not the user's


def one_line(exc: BaseException, detail_prefix: str | None = None) -> str:
    """`TypeError: first line of the message`; with `detail_prefix`, the first later line that
    starts with it is added in parentheses (a state-dict error's first `size mismatch`)."""
    text = str(exc).strip().splitlines()
    head = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
    if detail_prefix:
        detail = next((t.strip() for t in text[1:] if t.strip().startswith(detail_prefix)),
                      None)
        if detail:
            return f"{head} ({detail.rstrip('.')})"
    return head


def raised_at(exc: BaseException) -> str:
    """The exception in one line, with the user's file and line where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    user = [f for f in frames
            if "importlib" not in f.filename and not f.filename.startswith(PACKAGE_DIR)]
    # The user's own file rather than the library frame the error surfaced in (torch's linear).
    own = [f for f in user
           if "site-packages" not in f.filename and "dist-packages" not in f.filename]
    user = own or user
    at = f" (at {user[-1].filename}:{user[-1].lineno})" if user else ""
    if isinstance(exc, SyntaxError) and exc.filename:
        at = f" (at {exc.filename}:{exc.lineno})"
    return one_line(exc) + at


def capped(names: Iterable[object], limit: int = 4) -> str:
    """The first `limit` names, then how many more: `a, b, c, d and 3 more`."""
    names = [str(n) for n in names]
    head = ", ".join(names[:limit])
    return head + (f" and {len(names) - limit} more" if len(names) > limit else "")
