"""`DatasetContext`: what `check-dataset` was given, data, a tokenizer, maybe the user's code."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..inputs import pretrained, sources
from ..inputs import rows as token_rows
from .memo import Memo


@dataclass
class DatasetContext(Memo):
    """What `check-dataset` was given: data, a tokenizer, optionally the user's dataset code.

    From the CLI these are paths and a SPEC. From the Python API any of them may be the live
    object instead: `tokenizer_given` (a tokenizer), `records_given` (conversation records),
    `dataset_given` (a dataset class, a labelling function, or a dataset instance) and
    `batches_given` (collated batches). Without conversations (a `--tokenized` file, batches,
    or an instance alone) the labels are judged against each row's own tokens.
    """

    data: Path | None = None
    tokenizer_dir: Path | None = None
    dataset_spec: str | None = None
    max_length: int | None = None
    show: int = 3
    workers: int = 1
    summary: dict[str, Any] = field(default_factory=dict)
    views: list = field(default_factory=list)
    tokenized: bool = False  # `data` holds token rows, not conversations
    tokenizer_given: Any = None
    records_given: list | None = None
    dataset_given: Any = None
    batches_given: list | None = None
    # The model the labels are for (`--model DIR|SPEC`, or a live nn.Module): its loss
    # convention says which labels are right (`convention`); without one, the HF way.
    model_dir: Path | None = None
    model_spec: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    model_given: Any = None
    fuzz: int = 0  # --fuzz N: generated conversations through the user's code (masking/fuzz_search.py)
    seed: int = 0  # --seed S: the fuzz search's seed
    # Token rows given live (the Python API: a `datasets` object or a list of dicts), and
    # `--shard I/N`: only the I-th of N contiguous shares of the records (`sources.py`).
    rows_given: Any = None
    shard: tuple[int, int] | None = None
    # No tokenizer: token rows or batches judged by what their labels alone show; the rules
    # that need the template's truth skip (`registry.applicable(tokenizer=False)`).
    labels_only: bool = False
    # The collator the trainer uses (`--collator SPEC` with `--collator-arg`, or the live
    # object) and, from a trainer, the dataset its batches came from (`masking/collated.py`).
    collator_spec: str | None = None
    collator_given: Any = None
    collator_args: dict[str, Any] = field(default_factory=dict)
    collator_source: Any = None

    @property
    def tokenizer(self):
        if self.labels_only:
            return None
        if self.tokenizer_given is not None:
            return self.tokenizer_given
        return self.memo("tokenizer", lambda: pretrained.load_tokenizer(self.tokenizer_dir))

    @property
    def has_model(self) -> bool:
        return any(x is not None for x in (self.model_dir, self.model_spec, self.model_given))

    @property
    def model_name(self) -> str:
        if self.model_given is not None:
            return type(self.model_given).__name__
        if self.model_spec is not None:
            return self.model_spec.rpartition(":")[2]  # NAME: the header names the file
        return str(self.model_dir)

    @property
    def convention(self):
        """How the model's loss reads labels (`model.convention`), measured on a small random
        batch on the CPU (a live model: where it is); the HF convention when no model is given."""
        from ..model.convention import HF

        def measure():
            import torch

            from ..model.convention import detect
            from ..model.probe import vocab_size

            model = self.loaded_model()
            device = next(model.parameters()).device
            gen = torch.Generator().manual_seed(0)
            ids = torch.randint(0, vocab_size(model), (2, 32), generator=gen).to(device)
            # On its base: a live model adapted with a closure-aliased forward may crash.
            from ..model.apply import adapters_off
            with adapters_off(model):
                conv = detect(model, {"input_ids": ids})
            self.summary["loss_convention"] = conv.to_dict()
            return conv
        if not self.has_model:
            self.summary.setdefault("loss_convention", HF.to_dict())
            return HF
        return self.memo("convention", measure)

    def loaded_model(self):
        """The model the labels are for: the live one, or built once on the CPU (loss
        convention, packed attention)."""
        def load():
            if self.model_spec is not None:
                from ..model.user_model import build
                return build(self.model_spec, self.model_args, "cpu")
            return pretrained.load_model(self.model_dir, "fp32", "cpu")
        if self.model_given is not None:
            return self.model_given
        return self.memo("loaded_model", load)

    @property
    def collator(self):
        """The collator the trainer uses (`inputs.user_collator.UserCollator`), or None."""
        if self.collator_spec is None and self.collator_given is None:
            return None

        def build():
            from ..inputs.specs import load_spec
            from ..inputs.user_collator import UserCollator
            obj = self.collator_given if self.collator_given is not None \
                else load_spec(self.collator_spec)
            return UserCollator(obj, self.collator_spec, self.tokenizer, self.collator_args)
        return self.memo("collator", build)

    def collator_items(self, limit: int) -> list[tuple[int, str, Any]]:
        """Up to `limit` dataset items as the collator is given them, each with its line and
        location: the trainer's dataset, the user's dataset code's items, or token rows."""
        import itertools

        source = self.collator_source
        if source is not None:
            if hasattr(source, "__getitem__") and hasattr(source, "__len__"):
                return [(i + 1, f"dataset[{i}]", source[i])
                        for i in range(min(limit, len(source)))]
            return [(i + 1, f"dataset[{i}]", x)
                    for i, x in enumerate(itertools.islice(iter(source), limit))]
        user = self.user_data()
        if user is not None:
            return self._user_items(user, limit)
        if self.rows_given is None and not (self.data is not None and self.tokenized):
            return []
        return [(r.line, r.location, _item_dict(r.item))
                for r in itertools.islice(self.rows(), limit) if r.item is not None]

    def _user_items(self, user, limit: int) -> list[tuple[int, str, Any]]:
        """The user's dataset code's first items, raw from a class (as its DataLoader gets
        them), as dicts from a labelling function."""
        from ..inputs.user_dataset import to_item

        if not self.has_conversations:  # a dataset instance alone
            start, stop = self.span
            stop = len(user) if stop is None else min(stop, len(user))
            return [(i + 1, f"{user.name}[{i}]", user.raw(i, None, f"{user.name}[{i}]"))
                    for i in range(start, min(stop, start + limit))]
        out = []
        n_items = len(user) if user.kind == "class" else None
        for index, rec in enumerate(self.records()):
            if len(out) >= limit or (n_items is not None and index >= n_items):
                break
            if rec.messages is None:
                continue
            raw = user.raw(index, rec.messages, rec.location)
            if user.kind == "function":
                raw = _item_dict(to_item(raw, user.where(index, rec.location)))
            out.append((rec.line, rec.location, raw))
        return out

    @property
    def convention_note(self) -> str:
        conv = self.convention
        if not conv.measured and not self.has_model:
            return ("labels read the HF way (assumed, no --model): aligned with input_ids, "
                    "shifted inside the model, -100 ignored")
        return f"labels read as {self.model_name} reads them: {conv.describe()}"

    @property
    def tokenizer_path(self) -> str | None:
        """The tokenizer's directory, for worker processes that load their own copy."""
        return str(self.tokenizer_dir) if self.tokenizer_dir is not None else None

    @property
    def user_dataset(self) -> Any | None:
        """The user's dataset class, labelling function or instance; None without one."""
        return self.user_code(self.dataset_given, self.dataset_spec, "user_dataset")

    @property
    def has_conversations(self) -> bool:
        return self.records_given is not None or (self.data is not None and not self.tokenized)

    @property
    def source(self) -> str:
        """How locations name the data: the file, or what the API was given."""
        if self.data is not None:
            return str(self.data)
        if self.records_given is not None:
            return "records"
        if self.rows_given is not None:
            return type(self.rows_given).__name__
        return "batches" if self.batches_given is not None else "dataset"

    @property
    def layout(self) -> list:
        """Each file's name and rows, where locations name the file a row is in (a glob of
        parquet files); empty where `source:line` says it (`sources.locate`)."""
        if self.data is None or not sources.is_table(self.data):
            return []
        return sources.open_source(self.data).layout

    @property
    def span(self) -> tuple[int, int | None]:
        """Indices [start, stop) of the records (or rows) this run checks: all of them, or
        the shard's (`--shard I/N`)."""
        if self.shard is None:
            return 0, None
        return self.memo("shard_span", lambda: sources.shard_range(self._total(),
                                                                      *self.shard))

    def _total(self) -> int:
        """Every record (or row) of the input, the shards' together."""
        if self.data is not None:
            return sources.count(self.data)
        for given in (self.records_given, self.rows_given):
            if given is not None:
                n = sources.live_count(given)
                return n if n is not None else sum(1 for _ in sources.iter_live(given))
        if self.batches_given is not None:
            return sum(1 for _ in token_rows.batch_rows(self.batches_given))
        return len(self.user_data())

    def user_data(self):
        """The user's code ready to be asked for items (constructed once), or None."""
        obj = self.user_dataset
        if obj is None:
            return None

        def build():
            from ..inputs.user_dataset import UserData, is_instance
            spec = self.dataset_spec or getattr(obj, "__name__", type(obj).__name__)
            path = self.data
            if path is None and self.records_given is not None and not is_instance(obj):
                path = self._records_file()
            return UserData(obj, spec, self.tokenizer, path, self.max_length)
        return self.memo("user_data", build)

    def _records_file(self) -> Path:
        """Live records written to a temporary JSON Lines file, for a class that reads a path."""
        import json
        import tempfile

        def write() -> Path:
            fh = tempfile.NamedTemporaryFile("w", suffix=".jsonl", prefix="loradoctor-",
                                             delete=False, encoding="utf-8")
            with fh:
                for rec in self.records_given:
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            self.__dict__.setdefault("_temporary", []).append(fh.name)
            return Path(fh.name)
        return self.memo("records_file", write)

    def cleanup(self) -> None:
        """Remove the temporary files this run wrote (never anything of the user's)."""
        import os
        for name in self.__dict__.pop("_temporary", []):
            with contextlib.suppress(OSError):
                os.unlink(name)

    def records(self):
        """The conversation records (a fresh iterator each call); only the shard's with
        `--shard`. Live records (a list, a `datasets` object) are read as a stream."""
        start, stop = self.span
        if self.records_given is not None:
            return sources.live_records(self.records_given, start, stop)
        return sources.records(self.data, start, stop)

    def rows(self):
        """The token rows (a fresh iterator each call), when there are no conversations; a
        packed row is one row per sample (batches are split as they are read)."""
        import itertools

        start, stop = self.span
        if self.batches_given is not None:
            return itertools.islice(token_rows.batch_rows(self.batches_given), start, stop)
        return token_rows.unpacked(self._dataset_rows(start, stop))

    def _dataset_rows(self, start: int, stop: int | None):
        if self.rows_given is not None:
            return sources.live_rows(self.rows_given, type(self.rows_given).__name__,
                                        start, stop)
        if self.data is not None:
            return sources.rows(self.data, start, stop)
        user = self.user_data()
        if sources.is_live_dataset(user.instance):  # read in batches, not item by item
            return sources.live_rows(user.instance, user.name, start, stop)
        return token_rows.instance_rows(user.instance, user.name, start, stop)

    def count(self) -> int | None:
        """How many records or rows there are (for a progress bar; None: cannot say)."""
        start, stop = self.span
        if stop is not None:
            return stop - start
        if self.records_given is not None:
            return sources.live_count(self.records_given)
        if self.rows_given is not None:
            return sources.live_count(self.rows_given)
        if self.batches_given is not None:
            return sum(1 for _ in self.rows())
        if self.data is not None:
            if sources.is_table(self.data):
                return sources.open_source(self.data).total
            from ..masking.scan import count_lines
            return count_lines(self.data)
        return len(self.user_data())

    def validate_inputs(self) -> None:
        """Fail fast (exit 2) on inputs that cannot be read at all, before any check runs."""
        if self.labels_only:
            _ = self.collator
            return
        if self.tokenizer_given is None:
            pretrained.local_dir(self.tokenizer_dir, "tokenizer")
        if self.data is not None:
            sources.check_exists(self.data)
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            name = self.tokenizer_dir or type(tok).__name__
            raise InputError(f"tokenizer {name}: has no chat template, so there is no truth to "
                             f"check labels against (set tokenizer.chat_template)")
        if not self.has_conversations and self.batches_given is None and self.data is None \
                and self.rows_given is None:
            from ..inputs.user_dataset import is_instance
            if not is_instance(self.user_dataset):
                raise InputError("dataset: a dataset class or labelling function needs "
                                 "conversations to label (data=...); a dataset instance, "
                                 "batches or --tokenized rows can be checked alone")
        _ = self.user_dataset
        _ = self.collator  # a collator that cannot be loaded or built is exit 2
        if self.has_model:
            if self.model_dir is not None and self.model_given is None:
                pretrained.local_dir(self.model_dir, "model")
            _ = self.convention  # a model that cannot be loaded or built is exit 2
        if self.fuzz:
            from ..masking.fuzz_search import validate
            validate(self)
        if self.shard is not None:
            self._validate_shard()

    def _validate_shard(self) -> None:
        if self.fuzz:
            raise InputError("--fuzz with --shard: the generated conversations are not split "
                             "across shards; run --fuzz once, without --shard")
        if self.data is not None and self._total() == 0:
            raise InputError(f"data {self.data}: holds no records")


def _item_dict(item) -> dict:
    """A normalised item as the dict a collator takes (TRL's mask, where the labels were
    made from one)."""
    if item.mask_from in token_rows.MASK_KEYS:
        return {"input_ids": item.ids, item.mask_from: [int(y != -100) for y in item.labels]}
    out = {"input_ids": item.ids, "labels": item.labels}
    if item.attention is not None:
        out["attention_mask"] = item.attention
    return out
