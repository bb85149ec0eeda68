"""`LoraDoctorPlugin`: loradoctor's gate and watchdog inside an Axolotl run.

List the plugin in the Axolotl YAML; its settings are optional:

```yaml
plugins:
  - loradoctor.integrations.axolotl.LoraDoctorPlugin
loradoctor_on_error: raise     # raise (the default) | stop | warn
loradoctor_batches: 2          # collated batches checked at train start (default 2)
loradoctor_select: [LD1]       # only these rule codes or prefixes (default: every rule)
loradoctor_ignore: [LD114]     # leave these out
loradoctor_check_model: true   # also check the PEFT-wrapped model (default true)
```

The plugin adds one `LoraDoctorCallback` (`loradoctor.integrations.transformers`) to the
trainer Axolotl builds, through `add_callbacks_pre_trainer`: there the model is already
PEFT-wrapped, and the callback then receives, at train start, the run's tokenizer (with the
chat template Axolotl applied to it) and the first batches of Axolotl's own dataloader, after
its collator: the labels Axolotl is about to train on. While training runs, it watches each
step's loss and gradients.

A finding of error severity at train start, with `raise`, raises `UnhealthyPipeline` out of
`axolotl train` before the first optimizer step: no step is logged, no adapter is written, the
exit code is not 0. Keep `raise` under Axolotl: with `stop` the Trainer ends after the step it
began (its gradients dropped, nothing trained) but Axolotl then saves the untrained adapter and
exits 0; `warn` prints the findings and trains on.

Axolotl only logs a plugin it cannot import and trains anyway: look for loradoctor's report
(`loradoctor · trainer start`) in the run's output. Each setting must be declared to Axolotl
(`get_input_args`), or its config validation drops it.

Importing this module needs `axolotl`; loradoctor itself does not.
"""

from __future__ import annotations

from typing import Literal

try:
    from axolotl.integrations.base import BasePlugin
    from pydantic import BaseModel
except ImportError as missing:  # loradoctor does not depend on axolotl; say what to install
    raise ImportError(
        "loradoctor.integrations.axolotl is an Axolotl plugin and needs axolotl "
        f"(pip install axolotl): {missing}"
    ) from missing

from .transformers import LoraDoctorCallback

ARGS_MODEL = f"{__name__}.LoraDoctorArgs"


class LoraDoctorArgs(BaseModel):
    """The plugin's YAML settings. Axolotl keeps a key only if a plugin declares it; each is
    optional (None: the callback's default), since Axolotl drops the keys left at None."""

    loradoctor_on_error: Literal["raise", "stop", "warn"] | None = None
    loradoctor_batches: int | None = None
    loradoctor_select: list[str] | None = None
    loradoctor_ignore: list[str] | None = None
    loradoctor_check_model: bool | None = None


def callback_from(cfg) -> LoraDoctorCallback:
    """The callback the YAML's `loradoctor_*` settings describe (`cfg`: Axolotl's validated
    config, a dict)."""
    def setting(name, default):
        value = cfg.get(f"loradoctor_{name}")
        return default if value is None else value

    return LoraDoctorCallback(on_error=setting("on_error", "raise"),
                              batches=setting("batches", 2),
                              select=setting("select", None), ignore=setting("ignore", None),
                              check_model=setting("check_model", True))


class LoraDoctorPlugin(BasePlugin):
    """Adds loradoctor's callback to the trainer Axolotl builds."""

    def get_input_args(self) -> str:
        return ARGS_MODEL

    def add_callbacks_pre_trainer(self, cfg, model) -> list:
        # Called once per trainer, with the model already PEFT-wrapped; the callback reads the
        # tokenizer and the dataloader from the Trainer's events, so nothing else is needed.
        return [callback_from(cfg)]


__all__ = ["LoraDoctorArgs", "LoraDoctorPlugin", "callback_from"]
