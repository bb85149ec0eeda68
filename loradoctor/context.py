"""The inputs of one run, loaded lazily and measured once, shared by every rule.

`DatasetContext` serves `check-dataset`, `ModelContext` serves `check-model`. Each measurement
that several rules read (the oracle comparison, the probe logits, the adapters found) is
computed on first use through `memo()` and kept, so a rule is cheap once another has run.
Loading problems raise `InputError` (exit 2); nothing of the user's is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import load
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
    """What `check-dataset` was given: a data file, a tokenizer, optionally the user's dataset code."""

    data: Path
    tokenizer_dir: Path
    dataset_spec: str | None = None
    max_length: int | None = None
    show: int = 3
    workers: int = 1
    summary: dict[str, Any] = field(default_factory=dict)
    views: list = field(default_factory=list)

    @property
    def tokenizer(self):
        return self.memo("tokenizer", lambda: load.load_tokenizer(self.tokenizer_dir))

    @property
    def user_dataset(self) -> Any | None:
        """The user's dataset class or labelling function, or None without --dataset."""
        if not self.dataset_spec:
            return None
        return self.memo("user_dataset", lambda: load.load_spec(self.dataset_spec))

    def records(self):
        """Stream the data file's records (a fresh iterator each call)."""
        return load.read_records(self.data)

    def validate_inputs(self) -> None:
        """Fail fast (exit 2) on inputs that cannot be read at all, before any check runs."""
        load.local_dir(self.tokenizer_dir, "tokenizer")
        if not Path(self.data).is_file():
            raise InputError(f"data {self.data}: no such file")
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise InputError(f"tokenizer {self.tokenizer_dir}: has no chat template, so there is "
                             f"no truth to check labels against (set tokenizer.chat_template)")
        _ = self.user_dataset


@dataclass
class ModelContext(_Memo):
    """What `check-model` was given: a model directory, the user's LoRA code or PEFT settings.

    `base_model` is loaded in fp32 on `device`; `probe` is the probe batch (from data, from a
    tokenizer beside the model, else random ids under a fixed seed); `base_logits` are taken
    before the user's code touches the model; `adapted` is the model after `--apply`/`--peft`.
    """

    model_dir: Path
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

    def validate_inputs(self) -> None:
        load.local_dir(self.model_dir, "model")
        if self.tokenizer_dir is not None:
            load.local_dir(self.tokenizer_dir, "tokenizer")
        if self.data is not None and not Path(self.data).is_file():
            raise InputError(f"data {self.data}: no such file")
        if self.apply_spec and self.peft_kwargs is not None:
            raise InputError("--apply and --peft: give one of them, not both")
        _ = self.apply_fn
        _ = self.adapted  # applying the user's code is input handling: it raising is exit 2

    @property
    def apply_fn(self) -> Callable | None:
        if not self.apply_spec:
            return None
        return self.memo("apply_fn", lambda: load.load_spec(self.apply_spec))

    @property
    def tokenizer(self):
        """The tokenizer for the probe batch: --tokenizer, else one beside the model, else None."""
        def find():
            if self.tokenizer_dir is not None:
                return load.load_tokenizer(self.tokenizer_dir)
            if load.has_tokenizer(self.model_dir):
                return load.load_tokenizer(self.model_dir)
            return None
        return self.memo("tokenizer", find)

    def fresh_base_model(self):
        """A new copy of the base model from disk (for checks that need an untouched one)."""
        return load.load_model(self.model_dir, "fp32", self.device)

    @property
    def base_model(self):
        return self.memo("base_model", self.fresh_base_model)

    @property
    def probe(self) -> dict[str, Any]:
        from .model.probe import probe_batch
        return self.memo("probe", lambda: probe_batch(self))

    @property
    def base_logits(self):
        """Logits of the base model on the probe batch, taken before any adapter exists."""
        import torch

        def compute():
            model = self.base_model
            with torch.no_grad():
                out = model(input_ids=self.probe["input_ids"],
                            attention_mask=self.probe["attention_mask"])
            return out.logits.detach().clone()  # (B, T, V)
        return self.memo("base_logits", compute)

    @property
    def adapted(self):
        """The model after the user's LoRA code (or PEFT) ran on it."""
        from .model.apply import apply_adapters
        _ = self.base_logits  # must be taken before the adapters change the model
        return self.memo("adapted", lambda: apply_adapters(self))
