"""The user's own labelling code, called as the contract says, its items normalised.

A class is constructed with the arguments its signature asks for, matched by name (the
tokenizer; the data path; `max_length`), and `ds[i]` is item i, matched to the i-th record of
the file. A function is called as `fn(tokenizer, conversation)` per readable record. Items are
`(input_ids, labels, ...)` tuples or dicts with `input_ids` and `labels`, as lists or tensors,
padded or not. Anything the tool cannot call or read raises `InputError` naming the place.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..text import raised_at

TOKENIZER_NAMES = ("tokenizer", "tok", "processing_class")
PATH_NAMES = ("path", "data_path", "dataset_path", "jsonl_path", "file", "data_file",
              "file_path", "jsonl_file")
MAX_LENGTH_NAMES = ("max_length", "max_len", "max_seq_len", "max_seq_length", "seq_len")
IGNORE_INDEX = -100


@dataclass
class Item:
    """One sample as the user's code produced it, as plain lists."""

    ids: list[int]
    labels: list[int]
    attention: list[int] | None = None
    mask_from: str | None = None  # the labels' -100s were made here from this mask, not written


class UserData:
    """The user's dataset class (constructed) or labelling function, ready to be asked for items."""

    def __init__(self, obj: Any, spec: str, tokenizer, data: Path, max_length: int | None):
        self.spec = spec
        self.obj = obj
        self.name = getattr(obj, "__name__", type(obj).__name__)
        # The user's code gets the tokenizer itself, not a copy (a deep copy of a 150k-token
        # tokenizer costs seconds). It may set pad_token: that is part of *their* pipeline and
        # read back from here (LD108), while the oracle rendered its template facts and special
        # tokens before this constructor ran.
        self.tokenizer = tokenizer
        self.instance = None
        if is_instance(obj):
            # A dataset object the user built already (the Python API): read as it is.
            self.kind = "class"
            self.instance = obj
            self.obj = type(obj)
            self.name = type(obj).__name__
        elif inspect.isclass(obj):
            self.kind = "class"
            self.instance = self._construct(obj, data, max_length)
            if not hasattr(self.instance, "__getitem__"):
                raise InputError(f"SPEC {spec}: {self.name} instances have no __getitem__; "
                                 f"expected a dataset whose ds[i] is (input_ids, labels, ...)")
        elif callable(obj):
            self.kind = "function"
        else:
            raise InputError(f"SPEC {spec}: {self.name} is a {type(obj).__name__}, expected a "
                             f"dataset class or a function fn(tokenizer, conversation)")

    def _construct(self, cls, data: Path, max_length: int | None):
        try:
            params = inspect.signature(cls).parameters
        except (TypeError, ValueError) as exc:
            raise InputError(f"SPEC {self.spec}: cannot read {self.name}'s signature: {exc}") \
                from None
        kwargs: dict[str, Any] = {}
        for name, p in params.items():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if name in TOKENIZER_NAMES:
                kwargs[name] = self.tokenizer
            elif name in PATH_NAMES:
                kwargs[name] = str(data)
            elif name in MAX_LENGTH_NAMES:
                if max_length is not None:
                    kwargs[name] = max_length
                elif p.default is p.empty:
                    raise InputError(f"SPEC {self.spec}: {self.name}({name}) has no default; "
                                     f"pass --max-length")
            elif p.default is p.empty:
                raise InputError(
                    f"SPEC {self.spec}: {self.name} needs a {name!r} argument loradoctor cannot "
                    f"supply (it passes the tokenizer as one of {', '.join(TOKENIZER_NAMES)}, the "
                    f"data path as one of {', '.join(PATH_NAMES[:5])}, and max_length)")
        if not any(n in kwargs for n in PATH_NAMES):
            raise InputError(f"SPEC {self.spec}: {self.name} takes no data path argument (one of "
                             f"{', '.join(PATH_NAMES[:5])}), so it cannot read {data}")
        try:
            return cls(**kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's constructor raised
            args = ", ".join(kwargs)
            raise InputError(f"SPEC {self.spec}: {self.name}({args}) raised {raised_at(exc)}") \
                from exc

    def __bool__(self) -> bool:
        return True

    def __len__(self) -> int:
        if self.instance is None:
            raise TypeError("a labelling function has no length")
        try:
            return len(self.instance)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"SPEC {self.spec}: len() of the dataset raised {raised_at(exc)}") \
                from exc

    @property
    def max_length(self) -> int | None:
        for name in MAX_LENGTH_NAMES:
            value = getattr(self.instance, name, None)
            if isinstance(value, int):
                return value
        return None

    def item(self, index: int, messages: list[dict] | None, location: str) -> Item:
        return to_item(self.raw(index, messages, location), self.where(index, location))

    def where(self, index: int, location: str) -> str:
        """How an item is named in a message: `SPEC: ds[3] (train.jsonl:4)`."""
        return f"{self.spec}: ds[{index}] ({location})" if self.kind == "class" \
            else f"{self.spec}: {self.name}(tokenizer, conversation of {location})"

    def raw(self, index: int, messages: list[dict] | None, location: str) -> Any:
        """Item `index` as the user's code returns it (what a collator is given)."""
        try:
            return self.instance[index] if self.kind == "class" \
                else self.obj(self.tokenizer, [dict(m) for m in messages])
        except Exception as exc:  # noqa: BLE001 - the user's code raised on this record
            raise InputError(f"{self.where(index, location)} raised {raised_at(exc)}") from exc


def is_instance(obj: Any) -> bool:
    """A dataset object (items by index), as opposed to a class or a labelling function."""
    return not inspect.isclass(obj) and hasattr(obj, "__getitem__") and hasattr(obj, "__len__")


def to_item(raw: Any, where: str) -> Item:
    """`(input_ids, labels, [mask])` or `{"input_ids", "labels", ["attention_mask"]}` as lists."""
    if isinstance(raw, Mapping):
        if "input_ids" not in raw or "labels" not in raw:
            keys = ", ".join(map(str, list(raw)[:6])) or "none"
            raise InputError(f"{where} returned a dict without input_ids and labels "
                             f"(keys: {keys})")
        ids, labels, mask = raw["input_ids"], raw["labels"], raw.get("attention_mask")
    elif isinstance(raw, (tuple, list)) and len(raw) >= 2 and not isinstance(raw[0], (int, float)):
        ids, labels = raw[0], raw[1]
        mask = raw[2] if len(raw) > 2 else None
    else:
        raise InputError(f"{where} returned {type(raw).__name__}, expected (input_ids, labels, "
                         f"...) or a dict with input_ids and labels")
    ids = _ints(ids, "input_ids", where)
    labels = _ints(labels, "labels", where)
    attention = None
    if mask is not None:
        try:
            values = _ints(mask, "mask", where)
        except InputError:
            values = None
        if values is not None and len(values) == len(ids) and set(values) <= {0, 1}:
            attention = values
        if values is not None and len(values) == len(labels) and set(values) <= {0, 1} \
                and min(labels, default=0) >= 0:
            # MiniMind-style (X, Y, loss_mask): the mask says which labels count (labels that
            # carry their own marker, -100 or -1, are masked already).
            return Item(ids, [y if m else IGNORE_INDEX for y, m in zip(labels, values)],
                        attention, mask_from="loss_mask")
    return Item(ids, labels, attention)


def _ints(value: Any, what: str, where: str) -> list[int]:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], (list, tuple)):
        value = value[0]  # a batch of one
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        kind = type(value).__name__
        raise InputError(f"{where} returned {what} as {kind}, expected a flat list or tensor "
                         f"of token ids")
    return list(value)
