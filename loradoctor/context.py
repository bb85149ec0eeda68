"""The inputs of one run, loaded lazily and measured once, shared by every rule.

`DatasetContext` serves `check-dataset`, `ModelContext` serves `check-model`. Each measurement
that several rules read (the oracle comparison, the probe logits, the adapters found) is
computed on first use through `memo()` and kept, so a rule is cheap once another has run.
Loading problems raise `InputError` (exit 2); nothing of the user's is written.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .inputs import pretrained
from .inputs import specs
from . import text
from .errors import InputError


class _Memo:
    # Set by the CLI to a stderr rich Console when stderr is a terminal; checks that take a
    # while pass it to `render.progress()` and otherwise never print.
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

    def report_summary(self) -> dict[str, Any]:
        return dict(self.__dict__.get("summary", {}))

    def report_views(self) -> list:
        return list(self.__dict__.get("views", []))


@dataclass
class DatasetContext(_Memo):
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

    @property
    def tokenizer(self):
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
        from .model.convention import HF

        def measure():
            import torch

            from .model.convention import detect
            from .model.probe import vocab_size

            if self.model_given is not None:
                model = self.model_given
            elif self.model_spec is not None:
                from .model.user_model import build
                model = build(self.model_spec, self.model_args, "cpu")
            else:
                model = pretrained.load_model(self.model_dir, "fp32", "cpu")
            device = next(model.parameters()).device
            gen = torch.Generator().manual_seed(0)
            ids = torch.randint(0, vocab_size(model), (2, 32), generator=gen).to(device)
            # On its base: a live model adapted with a closure-aliased forward may crash.
            from .model.apply import adapters_off
            with adapters_off(model):
                conv = detect(model, {"input_ids": ids})
            self.summary["loss_convention"] = conv.to_dict()
            return conv
        if not self.has_model:
            self.summary.setdefault("loss_convention", HF.to_dict())
            return HF
        return self.memo("convention", measure)

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
        if self.dataset_given is not None:
            return self.dataset_given
        if not self.dataset_spec:
            return None
        return self.memo("user_dataset", lambda: specs.load_spec(self.dataset_spec))

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
        from .inputs import sources
        if self.data is None or not sources.is_table(self.data):
            return []
        return sources.open_source(self.data).layout

    @property
    def span(self) -> tuple[int, int | None]:
        """Indices [start, stop) of the records (or rows) this run checks: all of them, or
        the shard's (`--shard I/N`)."""
        if self.shard is None:
            return 0, None
        from .inputs import sources
        return self.memo("shard_span", lambda: sources.shard_range(self._total(),
                                                                      *self.shard))

    def _total(self) -> int:
        """Every record (or row) of the input, the shards' together."""
        from .inputs import sources
        if self.data is not None:
            return sources.count(self.data)
        for given in (self.records_given, self.rows_given):
            if given is not None:
                n = sources.live_count(given)
                return n if n is not None else sum(1 for _ in sources.iter_live(given))
        if self.batches_given is not None:
            from .inputs import rows
            return sum(1 for _ in rows.batch_rows(self.batches_given))
        return len(self.user_data())

    def user_data(self):
        """The user's code ready to be asked for items (constructed once), or None."""
        obj = self.user_dataset
        if obj is None:
            return None

        def build():
            from .inputs.user_dataset import UserData, is_instance
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
        from .inputs import sources
        start, stop = self.span
        if self.records_given is not None:
            return sources.live_records(self.records_given, start, stop)
        return sources.records(self.data, start, stop)

    def rows(self):
        """The token rows (a fresh iterator each call), when there are no conversations."""
        import itertools

        from .inputs import sources
        from .inputs import rows
        start, stop = self.span
        if self.batches_given is not None:
            return itertools.islice(rows.batch_rows(self.batches_given), start, stop)
        if self.rows_given is not None:
            return sources.live_rows(self.rows_given, type(self.rows_given).__name__,
                                        start, stop)
        if self.data is not None:
            return sources.rows(self.data, start, stop)
        user = self.user_data()
        if sources.is_live_dataset(user.instance):  # read in batches, not item by item
            return sources.live_rows(user.instance, user.name, start, stop)
        return rows.instance_rows(user.instance, user.name, start, stop)

    def count(self) -> int | None:
        """How many records or rows there are (for a progress bar; None: cannot say)."""
        from .inputs import sources
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
            from .masking.scan import count_lines
            return count_lines(self.data)
        return len(self.user_data())

    def validate_inputs(self) -> None:
        """Fail fast (exit 2) on inputs that cannot be read at all, before any check runs."""
        if self.tokenizer_given is None:
            pretrained.local_dir(self.tokenizer_dir, "tokenizer")
        if self.data is not None:
            from .inputs import sources
            sources.check_exists(self.data)
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            name = self.tokenizer_dir or type(tok).__name__
            raise InputError(f"tokenizer {name}: has no chat template, so there is no truth to "
                             f"check labels against (set tokenizer.chat_template)")
        if not self.has_conversations and self.batches_given is None and self.data is None \
                and self.rows_given is None:
            from .inputs.user_dataset import is_instance
            if not is_instance(self.user_dataset):
                raise InputError("dataset: a dataset class or labelling function needs "
                                 "conversations to label (data=...); a dataset instance, "
                                 "batches or --tokenized rows can be checked alone")
        _ = self.user_dataset
        if self.has_model:
            if self.model_dir is not None and self.model_given is None:
                pretrained.local_dir(self.model_dir, "model")
            _ = self.convention  # a model that cannot be loaded or built is exit 2
        if self.fuzz:
            from .masking.fuzz_search import validate
            validate(self)
        if self.shard is not None:
            self._validate_shard()

    def _validate_shard(self) -> None:
        if self.fuzz:
            raise InputError("--fuzz with --shard: the generated conversations are not split "
                             "across shards; run --fuzz once, without --shard")
        if self.data is not None and self._total() == 0:
            raise InputError(f"data {self.data}: holds no records")


@dataclass
class ModelContext(_Memo):
    """What `check-model` was given: a model, the user's LoRA code or PEFT settings.

    `model_dir` is a directory from the CLI; from the Python API `model_given` may be the live
    `nn.Module` instead: a base model (then `apply_fn`/`peft_kwargs` run on a copy of it, the
    user's object is never adapted by us) or a model the user already adapted (their own code
    or PEFT), checked as it is. `base_model` is loaded in fp32 on `device`; `probe` is the probe
    batch (from data, from a tokenizer beside the model, else random ids under a fixed seed);
    `base_logits` are taken before the user's code touches the model (for an already adapted
    model: with every adapter's B factor zeroed for the call); `adapted` is the model after
    `--apply`/`--peft`.
    """

    model_dir: Path | None = None
    apply_spec: str | None = None
    apply_kwargs: dict[str, Any] = field(default_factory=dict)
    peft_kwargs: dict[str, Any] | None = None
    data: Path | None = None
    tokenizer_dir: Path | None = None
    dtypes: tuple[str, ...] = ("fp32",)
    device: str = "cpu"
    train_steps: int = 0
    probe_shape: tuple[int, int] = (4, 128)  # (batch, tokens)
    seed: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    views: list = field(default_factory=list)
    fp16_headroom: float = 4.0  # LD302: warn when a fp32 peak is within this factor of 65504
    model_given: Any = None  # a live nn.Module (Python API)
    apply_given: Callable | None = None  # a live apply function (Python API)
    tokenizer_given: Any = None
    # `--model file.py:NAME` (the user's own model class or function) and its `--model-arg`s.
    model_spec: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    # Freeze every non-adapter parameter of the adapted model before the checks, as a training
    # script that freezes the base after the apply function does; undone by `cleanup()`.
    freeze_base: bool = False
    # Static mode (`--static`, or weights that do not fit): the model is built on the meta
    # device and only the rules that need no weight values run (`model/static.py`).
    static: bool = False
    static_why: str | None = None
    # `--offload`: loaded with accelerate's device_map="auto" over GPU, CPU and disk; the dict
    # is accelerate's max_memory ({} lets accelerate decide); None: loaded whole on `device`.
    offload: dict | None = None

    @property
    def model_name(self) -> str:
        if self.model_given is not None:
            return type(self.model_given).__name__
        return self.model_spec or str(self.model_dir)

    @property
    def live_adapted(self) -> bool:
        """The user handed us a model their code already adapted: check it as it is."""
        return self.model_given is not None and self.apply_fn is None and self.peft_kwargs is None

    def validate_inputs(self) -> None:
        if self.model_given is None and self.model_spec is None:
            pretrained.local_dir(self.model_dir, "model")
        self._decide_static()
        if self.tokenizer_dir is not None:
            pretrained.local_dir(self.tokenizer_dir, "tokenizer")
        if self.data is not None and not Path(self.data).is_file():
            raise InputError(f"data {self.data}: no such file")
        if (self.apply_spec or self.apply_given) and self.peft_kwargs is not None:
            raise InputError("--apply and --peft: give one of them, not both")
        _ = self.apply_fn
        _ = self.adapted  # applying the user's code is input handling: it raising is exit 2
        if self.live_adapted and not self.static:
            try:  # a model given adapted must at least run forward (it did not pass our apply)
                _ = self.base_logits
            except InputError:
                raise
            except Exception as exc:  # noqa: BLE001 - the user's model raised
                raise InputError(f"model {self.model_name}: its forward raises "
                                 f"{text.raised_at(exc)}") from exc

    @property
    def apply_fn(self) -> Callable | None:
        if self.apply_given is not None:
            return self.apply_given
        if not self.apply_spec:
            return None
        return self.memo("apply_fn", lambda: specs.load_spec(self.apply_spec))

    @property
    def tokenizer(self):
        """The tokenizer for the probe batch: --tokenizer, else one beside the model, else None."""
        def find():
            if self.tokenizer_given is not None:
                return self.tokenizer_given
            if self.tokenizer_dir is not None:
                return pretrained.load_tokenizer(self.tokenizer_dir)
            if self.model_dir is not None and pretrained.has_tokenizer(self.model_dir):
                return pretrained.load_tokenizer(self.model_dir)
            return None
        return self.memo("tokenizer", find)

    def _decide_static(self) -> None:
        """Static mode when asked for, or when the directory's weights cannot be loaded here."""
        from .model import static
        why = None if self.static or self.offload is not None else \
            static.static_reason(self.model_dir, self.device)
        if why is not None:
            self.static, self.static_why = True, why
        elif self.static and self.static_why is None:
            self.static_why = "--static"
        if self.static:
            self.summary["static_mode"] = {"reason": self.static_why,
                                           "rules": list(static.STATIC_RULES)}

    def _no_values(self, what: str) -> None:
        if self.static:
            from .rules import SkipCheck
            raise SkipCheck(f"static mode ({self.static_why}): {what} needs weight values")

    def fresh_base_model(self):
        """A new copy of the base model (for checks that need an untouched one)."""
        if self.static:
            from .model.static import build_meta
            return build_meta(self)
        if self.offload is not None:
            from .model.offload import load_offloaded
            return load_offloaded(self)
        if self.model_given is not None:
            if self.live_adapted:
                raise InputError("a fresh base model is not available for a model given "
                                 "already adapted")
            import copy
            return copy.deepcopy(self.memo("pristine", lambda: copy.deepcopy(self.model_given)))
        if self.model_spec is not None:
            # Built once from the user's code (seeded), then copied: every fresh base is the same.
            import copy

            from .model.user_model import build
            return copy.deepcopy(self.memo("pristine", lambda: build(
                self.model_spec, self.model_args, self.device, self.seed)))
        return pretrained.load_model(self.model_dir, "fp32", self.device)

    def fresh_adapted(self):
        """A second, independent copy of the adapted model with freshly initialised adapters.

        Rebuilt by the user's own code (or PEFT) on a fresh base where we have it; for a model
        given already adapted, a deep copy whose adapters are set back to a fresh start (A
        random, B zero), which is only faithful when no forward is patched by a closure.
        """
        from .model.apply import apply_adapters, fresh_copy
        if self.live_adapted:
            return fresh_copy(self.adapted, self.seed)
        return apply_adapters(self, self.fresh_base_model())

    @property
    def base_model(self):
        if self.model_given is not None:
            if self.live_adapted:
                return self.model_given
            # The user's code adapts what it is given in place: give it a copy, never theirs.
            import copy
            return self.memo("base_model", lambda: copy.deepcopy(self.model_given))
        return self.memo("base_model", self.fresh_base_model)

    @property
    def probe(self) -> dict[str, Any]:
        from .model.probe import probe_batch
        self._no_values("the probe batch")
        return self.memo("probe", lambda: probe_batch(self))

    @property
    def convention(self):
        """How the model is called and how its loss reads labels (`model.convention`), measured
        on the base model before any adapter exists (a model given adapted: as it is)."""
        self._no_values("measuring the loss convention")

        def measure():
            from .model.convention import detect
            if self.live_adapted:  # measured on its base: a closure-aliased forward may crash
                from .model.apply import adapters_off
                with adapters_off(self.model_given, self.seed):
                    conv = detect(self.model_given, self.probe)
            else:
                conv = detect(self.base_model, self.probe)
            self.summary["loss_convention"] = conv.to_dict()
            return conv
        return self.memo("convention", measure)

    @property
    def convention_note(self) -> str:
        if self.static:
            from .model.static import note
            return note(self)
        return f"loss convention: {self.convention.describe()}"

    @property
    def base_logits(self):
        """Logits of the base model on the probe batch, taken before any adapter exists."""
        import torch

        self._no_values("the base logits")

        def compute():
            from .model.convention import logits
            if self.live_adapted:
                from .model.apply import logits_without_adapters
                return logits_without_adapters(self.model_given, self.probe, self.seed,
                                               self.convention)
            model = self.base_model
            with torch.no_grad():
                out = logits(model, self.probe, self.convention)
            return out.detach().clone()  # (B, T, V)
        return self.memo("base_logits", compute)

    def release_base_logits(self) -> None:
        """Let the base logits go once the identity check has compared them (their only
        reader): (B, T, V) fp32 is the largest thing a run keeps, 310 MB for Qwen3's vocabulary
        at 4 x 128 tokens. `base_logits` is None afterwards."""
        cache = self.__dict__.get("_memo", {})
        if cache.get("base_logits", (False, None))[0]:
            cache["base_logits"] = (True, None)

    @property
    def adapted(self):
        """The model after the user's LoRA code (or PEFT) ran on it."""
        from .model.apply import apply_adapters
        if self.live_adapted:
            model = self.model_given
        else:
            if not self.static:
                _ = self.base_logits  # must be taken before the adapters change the model
            model = self.memo("adapted", lambda: apply_adapters(self))
        if self.freeze_base:
            from .model.freeze import freeze_base
            self.memo("frozen_base", lambda: freeze_base(model))
        return model

    def cleanup(self) -> None:
        """Put back the requires_grad flags `freeze_base` switched off (a live model included)."""
        frozen = self.__dict__.get("_memo", {}).pop("frozen_base", None)
        if frozen is not None and frozen[0]:
            frozen[1].restore()
        if self.offload is not None:  # the temporary folders of offloaded weights
            from .model.offload import cleanup
            cleanup(self)


@dataclass
class AdapterContext(_Memo):
    """What `check-adapter` was given: a saved adapter and the base model it was trained on.

    `adapter_dir` is a PEFT folder (`adapter_config.json` and its weights), or with
    `apply_spec` a file the user's own save function wrote (their apply function builds the
    adapters, the load function beside it loads the file). The measurements live in
    `model/saved_adapter.py`; nothing is written into the adapter folder.
    """

    adapter_dir: Path
    model_dir: Path | None  # None with `model_spec`: the user's own model code
    apply_spec: str | None = None
    device: str = "cpu"
    model_spec: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    probe_shape: tuple[int, int] = (2, 64)  # (batch, tokens)
    seed: int = 0
    data: Path | None = None  # the probe batch's chat data (None: built-in turns or random ids)
    summary: dict[str, Any] = field(default_factory=dict)
    views: list = field(default_factory=list)

    def validate_inputs(self) -> None:
        if self.model_spec is None:
            pretrained.local_dir(self.model_dir, "model")
            if not (Path(self.model_dir) / "config.json").exists():
                raise InputError(f"model {self.model_dir}: no config.json, not a Hugging Face "
                                 f"model directory")
        from .model.saved_adapter import artifact
        _ = artifact(self)

    @property
    def apply_fn(self) -> Callable | None:
        if not self.apply_spec:
            return None
        return self.memo("apply_fn", lambda: specs.load_spec(self.apply_spec))

    @property
    def tokenizer(self):
        """A tokenizer beside the model (or the adapter, as PEFT folders often keep one)."""
        def find():
            for d in (self.model_dir, self.model_args.get("path"), self.adapter_dir):
                if d is not None and Path(d).is_dir() and pretrained.has_tokenizer(d):
                    return pretrained.load_tokenizer(d)
            return None
        return self.memo("tokenizer", find)

    def fresh_base_model(self):
        if self.model_spec is not None:
            import copy

            from .model.user_model import build
            return copy.deepcopy(self.memo("pristine", lambda: build(
                self.model_spec, self.model_args, self.device, self.seed)))
        return pretrained.load_model(self.model_dir, "fp32", self.device)

    @property
    def base_model(self):
        return self.memo("base_model", self.fresh_base_model)

    @property
    def convention(self):
        """How the base model is called and reads labels (`model.convention`), measured on it
        before the adapter is loaded."""
        def measure():
            from .model.convention import detect
            conv = detect(self.base_model, self.probe)
            self.summary["loss_convention"] = conv.to_dict()
            return conv
        return self.memo("convention", measure)

    @property
    def convention_note(self) -> str:
        return f"loss convention: {self.convention.describe()}"

    @property
    def probe(self) -> dict[str, Any]:
        from .model.probe import probe_batch
        return self.memo("probe", lambda: probe_batch(self))
