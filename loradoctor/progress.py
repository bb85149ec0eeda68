"""Progress bars for measurements that take a while, shown only where the CLI asked for them.

The CLI sets `ctx.progress_console` to a stderr console when stderr is a terminal; a
measurement wraps its loop in `progress(ctx, ...)` and never prints otherwise. Core: it
imports nothing of loradoctor's (rich only when a bar is shown).
"""

from __future__ import annotations


def progress(ctx, description: str, total=None):
    """A progress bar on stderr when the CLI gave the context a terminal console; else a no-op.

    Use: `with progress(ctx, "tokenizing", total=n) as advance: ... advance(k)`. `total` may be
    a callable (counting the lines of a big file, say): it is called only when a bar is shown.
    """
    from contextlib import contextmanager

    @contextmanager
    def bar():
        con = getattr(ctx, "progress_console", None)
        if con is None:
            yield lambda n=1: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=con, transient=True) as prog:
            task = prog.add_task(description, total=total() if callable(total) else total)
            yield lambda n=1: prog.advance(task, n)
    return bar()
