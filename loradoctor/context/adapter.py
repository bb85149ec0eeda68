"""`AdapterContext`: what `check-adapter` was given, a saved adapter and its base model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..inputs import pretrained
from .model_source import ModelSource


@dataclass
class AdapterContext(ModelSource):
    """What `check-adapter` was given: a saved adapter and the base model it was trained on.

    `adapter_dir` is a PEFT folder (`adapter_config.json` and its weights), or with
    `apply_spec` a file the user's own save function wrote (their apply function builds the
    adapters, the load function beside it loads the file). The measurements live in
    `model/saved_adapter/`; nothing is written into the adapter folder.
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
        from ..model.saved_adapter.files import artifact
        _ = artifact(self)

    @property
    def tokenizer(self):
        """A tokenizer beside the model (or the adapter, as PEFT folders often keep one)."""
        def find():
            for d in (self.model_dir, self.model_args.get("path"), self.adapter_dir):
                if d is not None and Path(d).is_dir() and pretrained.has_tokenizer(d):
                    return pretrained.load_tokenizer(d)
            return None
        return self.memo("tokenizer", find)
