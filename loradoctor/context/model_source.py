"""`ModelSource`: what the model contexts (check-model, check-adapter) share.

The base model comes from a local directory or the user's own model code (a SPEC built with
its arguments, once, then copied, so every fresh base is the same); how it is called and how
its loss reads labels (`model.convention`) is measured on it before any adapter exists; the
probe batch and the user's apply function are read once. A context using it has the fields
`model_dir`, `model_spec`, `model_args`, `device`, `seed`, `apply_spec`, `summary`.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from ..inputs import pretrained
from .memo import Memo


class ModelSource(Memo):
    apply_given: Callable | None = None  # a live apply function (the Python API)

    @property
    def apply_fn(self) -> Callable | None:
        """The user's apply function: the live one, or the one `--apply SPEC` names."""
        return self.user_code(self.apply_given, self.apply_spec, "apply_fn")

    def model_from_source(self):
        """A new copy of the base model from the directory or the user's model code; its
        quantized layers, if any, run as training runs them (`quantized_state.training_path`)."""
        from ..model.quantized_state import training_path
        if self.model_spec is not None:
            from ..model.user_model import build
            model = copy.deepcopy(self.memo("pristine", lambda: build(
                self.model_spec, self.model_args, self.device, self.seed)))
        else:
            model = pretrained.load_model(self.model_dir, "fp32", self.device,
                                          getattr(self, "quantize", None))
        training_path(model)  # loradoctor's own copy: the hooks stay with it
        return model

    @property
    def base_model(self):
        return self.memo("base_model", self.fresh_base_model)

    def fresh_base_model(self):
        return self.model_from_source()

    @property
    def probe(self) -> dict[str, Any]:
        from ..model.probe import probe_batch
        return self.memo("probe", lambda: probe_batch(self))

    @property
    def convention(self):
        """How the base model is called and reads labels (`model.convention`), measured on it
        before any adapter exists."""
        return self.memo("convention", lambda: self.measured_convention(self.base_model))

    def measured_convention(self, model):
        """`model.convention.detect` on the probe batch, kept in the report's summary."""
        from ..model.convention import detect
        conv = detect(model, self.probe)
        self.summary["loss_convention"] = conv.to_dict()
        return conv

    @property
    def convention_note(self) -> str:
        return f"loss convention: {self.convention.describe()}"
