"""`ModelContext`: what `check-model` was given, a model and the user's LoRA code or PEFT."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError
from ..inputs import pretrained
from ..text import raised_at
from .model_source import ModelSource


@dataclass
class ModelContext(ModelSource):
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
    real_dtypes: bool = False  # on a CPU, fp16 (bf16) passes in torch's real kernels, not emulated
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
    # `--quantize 4bit|8bit`: the model directory loaded quantized by bitsandbytes (QLoRA).
    quantize: str | None = None

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
                                 f"{raised_at(exc)}") from exc

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
        from .. import registry
        from ..model.placement import static_reason
        why = None if self.static or self.offload is not None else \
            static_reason(self.model_dir, self.device)
        if why is not None:
            self.static, self.static_why = True, why
        elif self.static and self.static_why is None:
            self.static_why = "--static"
        if self.static:
            self.summary["static_mode"] = {"reason": self.static_why,
                                           "rules": registry.static_codes()}

    def _no_values(self, what: str) -> None:
        if self.static:
            from ..rules import SkipCheck
            raise SkipCheck(f"static mode ({self.static_why}): {what} needs weight values")

    def fresh_base_model(self):
        """A new copy of the base model (for checks that need an untouched one)."""
        if self.static:
            from ..model.static import build_meta
            return build_meta(self)
        if self.offload is not None:
            from ..model.offload import load_offloaded
            return load_offloaded(self)
        if self.model_given is not None:
            if self.live_adapted:
                raise InputError("a fresh base model is not available for a model given "
                                 "already adapted")
            return copy.deepcopy(self.memo("pristine", lambda: copy.deepcopy(self.model_given)))
        return self.model_from_source()

    def fresh_adapted(self):
        """A second, independent copy of the adapted model with freshly initialised adapters.

        Rebuilt by the user's own code (or PEFT) on a fresh base where we have it; for a model
        given already adapted, a deep copy whose adapters are set back to a fresh start (A
        random, B zero), which is only faithful when no forward is patched by a closure.
        """
        from ..model.apply import apply_adapters, fresh_copy
        if self.live_adapted:
            return fresh_copy(self.adapted, self.seed)
        return apply_adapters(self, self.fresh_base_model())

    @property
    def base_model(self):
        if self.model_given is not None:
            if self.live_adapted:
                return self.model_given
            # The user's code adapts what it is given in place: give it a copy, never theirs.
            return self.memo("base_model", lambda: copy.deepcopy(self.model_given))
        return self.memo("base_model", self.fresh_base_model)

    @property
    def probe(self) -> dict[str, Any]:
        self._no_values("the probe batch")
        return ModelSource.probe.fget(self)

    @property
    def convention(self):
        """How the model is called and how its loss reads labels (`model.convention`), measured
        on the base model before any adapter exists (a model given adapted: as it is)."""
        self._no_values("measuring the loss convention")

        def measure():
            if self.live_adapted:  # measured on its base: a closure-aliased forward may crash
                from ..model.apply import adapters_off
                with adapters_off(self.model_given, self.seed):
                    return self.measured_convention(self.model_given)
            return self.measured_convention(self.base_model)
        return self.memo("convention", measure)

    @property
    def convention_note(self) -> str:
        if self.static:
            from ..model.static import note
            return note(self)
        return ModelSource.convention_note.fget(self)

    @property
    def base_logits(self):
        """Logits of the base model on the probe batch, taken before any adapter exists."""
        import torch

        self._no_values("the base logits")

        def compute():
            from ..model.convention import logits
            if self.live_adapted:
                from ..model.apply import logits_without_adapters
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
        from ..model.apply import apply_adapters
        if self.live_adapted:
            model = self.model_given
        else:
            if not self.static:
                _ = self.base_logits  # must be taken before the adapters change the model
            model = self.memo("adapted", lambda: apply_adapters(self))
        if "quantized_base" not in self.summary:
            self._note_quantized(model)
        if self.freeze_base:
            from ..model.freeze import freeze_base
            self.memo("frozen_base", lambda: freeze_base(model))
        return model

    def _note_quantized(self, model) -> None:
        """A quantized base in the report's summary: its layers, and whether --peft prepared it
        for k-bit training first (as QLoRA guides do)."""
        from ..model.quantized import describe
        note = describe(model)
        if note is not None:
            if self.peft_kwargs is not None:
                note["prepared_for_kbit_training"] = True
            self.summary["quantized_base"] = note

    def cleanup(self) -> None:
        """Put back the requires_grad flags `freeze_base` switched off (a live model included)."""
        frozen = self.__dict__.get("_memo", {}).pop("frozen_base", None)
        if frozen is not None and frozen[0]:
            frozen[1].restore()
        if self.offload is not None:  # the temporary folders of offloaded weights
            from ..model.offload import cleanup
            cleanup(self)
