"""Leaving a live tokenizer as found: its settings, saved now and put back after the run.

The user's dataset code runs with their own tokenizer and may change it (set `pad_token`,
`padding_side`); the Rust backend's truncation and padding are global state too. The gate and
the callback borrow the tokenizer the training script holds, so everything it can change is
put back.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable

SETTINGS = ("padding_side", "truncation_side", "model_max_length", "chat_template",
            "add_bos_token", "add_eos_token", "split_special_tokens")
SPECIAL_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token",
                  "mask_token")


def restorer(tok) -> Callable[[], None]:
    """A function that puts the tokenizer's settings back as they are now."""
    saved = {a: copy.copy(getattr(tok, a)) for a in SETTINGS if hasattr(tok, a)}
    special = {k: getattr(tok, k, None) for k in SPECIAL_TOKENS}
    extra = list(getattr(tok, "additional_special_tokens", []) or [])
    backend = getattr(tok, "backend_tokenizer", None)
    trunc = copy.deepcopy(backend.truncation) if backend is not None else None
    pad = copy.deepcopy(backend.padding) if backend is not None else None

    def restore() -> None:
        for name, value in [*saved.items(), *special.items()]:
            _put_back(tok, name, value)
        with contextlib.suppress(Exception):
            if list(getattr(tok, "additional_special_tokens", []) or []) != extra:
                tok.additional_special_tokens = extra
        if backend is not None:
            _put_back_backend(backend.truncation, trunc, backend.no_truncation,
                              backend.enable_truncation)
            _put_back_backend(backend.padding, pad, backend.no_padding, backend.enable_padding)
    return restore


def _put_back(tok, name: str, value: Any) -> None:
    with contextlib.suppress(Exception):
        if getattr(tok, name, None) != value:
            setattr(tok, name, value)


def _put_back_backend(now: Any, saved: dict | None, disable: Callable, enable: Callable) -> None:
    """The Rust backend's truncation or padding: off again, or on with the saved settings."""
    with contextlib.suppress(Exception):
        if now != saved:
            if saved is None:
                disable()
            else:
                enable(**saved)
