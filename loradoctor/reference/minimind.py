"""MiniMind-style hand-written LoRA used by the reference runs (`loradoctor reference`).

The same code people write first: a `LoRA` module (A Kaiming, B zero, scaling alpha / r) and
an `apply_lora(model, rank, alpha)` that freezes the base and patches `module.forward` in a
loop. `apply_lora` has the late-binding closure bug; `apply_lora_fixed` binds the loop values
with default arguments. The init variants break the identity start (`B` random) or freeze the
adapter (`A` zeroed after attaching, `B` zero). Shipped inside the package so the reference
runs work from an installed wheel, and loadable as a SPEC (`loradoctor.reference.minimind:NAME`).
"""

import math

from torch import nn

SPEC = "loradoctor.reference.minimind"


class LoRA(nn.Module):
    def __init__(self, in_features, out_features, rank, alpha):
        super().__init__()
        self.rank = rank
        self.scaling = alpha / rank
        self.A = nn.Linear(in_features, rank, bias=False)  # (r, in)
        self.B = nn.Linear(rank, out_features, bias=False)  # (out, r)
        nn.init.kaiming_uniform_(self.A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.B.weight)

    def forward(self, x):
        return self.B(self.A(x)) * self.scaling


def _targets(model, only=None):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)
            and not n.endswith("lm_head") and (only is None or n.endswith(only))]


def _freeze(model):
    for p in model.parameters():
        p.requires_grad = False


def apply_lora(model, rank=8, alpha=16, only=None):
    """The closure bug: `forward_with_lora` looks up `original_forward` and `lora` when called."""
    _freeze(model)
    for name, module in _targets(model, only):
        lora = LoRA(module.in_features, module.out_features, rank, alpha).to(module.weight.device)
        module.lora = lora
        original_forward = module.forward

        def forward_with_lora(x):
            return original_forward(x) + lora(x)

        module.forward = forward_with_lora


def apply_lora_fixed(model, rank=8, alpha=16, only=None):
    """Fixed: default arguments bind this iteration's values at definition time."""
    _freeze(model)
    for name, module in _targets(model, only):
        lora = LoRA(module.in_features, module.out_features, rank, alpha).to(module.weight.device)
        module.lora = lora

        def forward_with_lora(x, original_forward=module.forward, lora=lora):
            return original_forward(x) + lora(x)

        module.forward = forward_with_lora


def apply_lora_attention(model, rank=8, alpha=16):
    """The closure bug on q_proj/o_proj only: equal shapes, so it runs and computes garbage."""
    apply_lora(model, rank, alpha, only=("q_proj", "o_proj"))


def apply_lora_attention_fixed(model, rank=8, alpha=16):
    apply_lora_fixed(model, rank, alpha, only=("q_proj", "o_proj"))


def apply_lora_b_random(model, rank=8, alpha=16):
    """B Kaiming-initialised like A: the start is not the base model."""
    apply_lora_fixed(model, rank, alpha)
    for m in model.modules():
        if isinstance(m, LoRA):
            nn.init.kaiming_uniform_(m.B.weight, a=math.sqrt(5))


def apply_lora_a_zero(model, rank=8, alpha=16):
    """A zeroed after attaching (a later init pass), B zero: no gradient reaches either."""
    apply_lora_fixed(model, rank, alpha)
    for m in model.modules():
        if isinstance(m, LoRA):
            nn.init.zeros_(m.A.weight)
