"""The collator a trainer uses, as the user names it: `--collator SPEC` or the live object.

A class (`transformers:DataCollatorForLanguageModeling`, the user's own) is built with the
tokenizer, passed under the name its signature gives it (`tokenizer`, `processing_class`, ...;
the first parameter otherwise), and the `--collator-arg KEY=VALUE` arguments (`mlm=False`);
anything else is a callable taking a list of dataset items, as a DataLoader's `collate_fn` is.
The Trainer's wrapper that drops unused columns (`RemoveColumnsCollator`) is named after the
collator it wraps (TRL's collators as TRL's: two libraries name a collator alike). Anything that cannot be built or called raises `InputError` naming it.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..errors import InputError
from ..text import raised_at
from .user_dataset import TOKENIZER_NAMES


class UserCollator:
    """A collator ready to be called on a list of dataset items."""

    def __init__(self, obj: Any, spec: str | None, tokenizer: Any, args: dict | None = None):
        self.spec = spec or collator_name(obj)
        self.name = collator_name(obj)
        args = dict(args or {})
        if inspect.isclass(obj):
            self.fn = _build(obj, self.spec, tokenizer, args)
        elif callable(obj):
            if args:
                raise InputError(f"--collator-arg: arguments are for a collator class; "
                                 f"{self.spec} is already built")
            self.fn = obj
        else:
            raise InputError(f"collator {self.spec}: a {type(obj).__name__}, expected a "
                             f"collator class or a callable taking a list of dataset items")

    def __call__(self, items: list, where: str) -> Any:
        try:
            return self.fn(items)
        except Exception as exc:  # noqa: BLE001 - the user's collator raised on these items
            raise InputError(f"collator {self.spec} on {where} raised {raised_at(exc)}") \
                from exc


def collator_name(obj: Any) -> str:
    """The collator's class or function name, through the Trainer's column-removing wrapper."""
    inner = getattr(obj, "data_collator", None)
    if type(obj).__name__ == "RemoveColumnsCollator" and inner is not None:
        obj = inner
    named = obj if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj) \
        else type(obj)
    library = getattr(named, "__module__", "").partition(".")[0]
    return f"TRL's {named.__name__}" if library == "trl" else named.__name__


def _build(cls: type, spec: str, tokenizer: Any, args: dict) -> Any:
    try:
        params = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):
        params = []
    named = next((p.name for p in params if p.name in TOKENIZER_NAMES), None)
    kwargs = dict(args)
    if named is not None:
        kwargs.setdefault(named, tokenizer)
    elif params and params[0].kind in (params[0].POSITIONAL_ONLY,
                                       params[0].POSITIONAL_OR_KEYWORD) \
            and params[0].name not in kwargs:
        kwargs[params[0].name] = tokenizer
    try:
        return cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's constructor raised
        given = ", ".join(kwargs)
        raise InputError(f"collator {spec}: {cls.__name__}({given}) raised {raised_at(exc)}; "
                         f"--collator-arg KEY=VALUE passes its other arguments") from exc
