"""`--freeze-base`: check the pipeline as a training script that freezes the base will train it.

Many apply functions leave the base trainable and the training script freezes it afterwards
(MiniMind's `train_lora.py` sets `requires_grad = False` on every parameter without "lora" in
its name). With `freeze_base`, check-model does the same to the adapted model before any
check runs: every parameter that is not part of an adapter stops requiring a gradient. The
flags it changed are kept, and `FrozenBase.restore()` puts them back when the run ends, so a
live model handed to the gate comes back exactly as it was found.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn


@dataclass
class FrozenBase:
    """The base parameters `freeze_base` switched off, by name, to be switched back on."""

    frozen: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    numel: int = 0

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.frozen]

    def restore(self) -> None:
        for _, p in self.frozen:
            p.requires_grad_(True)
        self.frozen = []


def freeze_base(model: nn.Module) -> FrozenBase:
    """Set requires_grad=False on every parameter of `model` outside the adapters it holds."""
    from .adapters import discover

    adapter_ids = discover(model).adapter_param_ids()
    done = FrozenBase()
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in adapter_ids:
            p.requires_grad_(False)
            done.frozen.append((name, p))
            done.numel += p.numel()
    return done


def frozen_by_us(ctx) -> FrozenBase | None:
    """What `freeze_base` froze in this run (None when the run does not freeze the base)."""
    if not getattr(ctx, "freeze_base", False):
        return None
    _ = ctx.adapted  # freezing happens when the adapted model is first taken
    ok, value = ctx.__dict__.get("_memo", {}).get("frozen_base", (False, None))
    return value if ok else None
