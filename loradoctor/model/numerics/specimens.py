"""Constructed models and LoRA set-ups with documented numerics problems, built in code.

The real packaged model (SmolLM2-135M-Instruct) does not overflow fp16: its largest activation
is about 25,000 on a chat batch, a headroom of about 2.6x to 65,504. To show each numerics
failure for real, without a hub, these specimens start from the tiny seeded Llama of
`loradoctor.assets.tiny_llama_dir()` (2 layers, hidden 64, MLP 160, vocab 512) and scale a
few named weights, each scaling reproducing one documented pattern. Everything is
deterministic (seeded base, fixed factors) and built once into the assets cache.

The LoRA set-ups are written the way users write them (`apply(model, rank, alpha)`), so the
CLI (`--apply loradoctor.model.numerics.specimens:apply_lora_fp16_adapters`), the tests and the
reference runs use the same code.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

SPECIMENS_VERSION = "2"  # bump when a factor below changes

# Factors, named so that docstrings, tests and docs quote the same numbers.
LARGE_ACTIVATION_NORM_GAIN = 64.0  # layer 1 post_attention_layernorm.weight
LARGE_ACTIVATION_DOWN_SCALE = 2048.0  # layer 1 mlp.down_proj.weight
LOW_HEADROOM_DOWN_SCALE = 256.0  # same layer, an eighth of the above: peaks ~22k, no overflow
ATTENTION_QK_SCALE = 64.0  # q_proj and k_proj of every layer (scores 4096x larger)
SMALL_GRADIENT_HEAD_SCALE = 2.0 ** -10  # lm_head.weight


def _specimen(name: str, scale) -> Path:
    from ...assets import build_atomically, cache_dir, tiny_llama_dir

    base = tiny_llama_dir()

    def build(out: Path) -> None:
        from ...inputs.pretrained import load_model
        model = load_model(base, "fp32", "cpu")
        with torch.no_grad():
            scale(model)
        model.save_pretrained(out, safe_serialization=True)

    return build_atomically(cache_dir() / f"numerics-{name}-v{SPECIMENS_VERSION}", build)


def _layer_1_mlp_scaled(down_scale: float):
    """Layer 1's post-attention norm gain times `LARGE_ACTIVATION_NORM_GAIN` and its MLP's
    down_proj weight times `down_scale`: the MLP output grows by both."""
    def scale(model):
        layer = model.model.layers[1]
        layer.post_attention_layernorm.weight.mul_(LARGE_ACTIVATION_NORM_GAIN)
        layer.mlp.down_proj.weight.mul_(down_scale)
    return scale


def large_activation_dir() -> Path:
    """A tiny Llama whose layer-1 MLP output passes 65,504: the T5 fp16 overflow pattern.

    T5 v1.1 / mT5 return NaN under fp16 because one feed-forward output (the `wo` projection)
    reaches values such as 66,246, past fp16's largest finite value 65,504 (transformers
    #5651, #14189), while bf16, with fp32's exponent range, runs clean. The packaged SmolLM2
    peaks near 25,000, so this specimen makes the pattern happen in the same place, the MLP
    output projection:

    - `model.layers.1.post_attention_layernorm.weight` is multiplied by 64 (large RMSNorm
      gains are how such peaks arise in trained models), so gate_proj / up_proj outputs peak
      near 45 and their product near 2,000, far inside fp16;
    - `model.layers.1.mlp.down_proj.weight` is multiplied by 2,048 (weights still only about
      160 at most, exactly representable in fp16), so the down_proj output peaks at about
      150,000-180,000 in fp32 on a random-token batch.

    In fp16 the first module whose output is inf is `model.layers.1.mlp.down_proj`; the loss
    is nan. In bf16 every value stays finite and the loss matches fp32 to about 1e-3.
    """
    return _specimen("large-activation", _layer_1_mlp_scaled(LARGE_ACTIVATION_DOWN_SCALE))


def low_headroom_dir() -> Path:
    """The large-activation specimen with an 8x smaller down_proj: no overflow, little room.

    `model.layers.1.post_attention_layernorm.weight` x 64 and `model.layers.1.mlp.down_proj.weight`
    x 256: the down_proj output peaks near 18,000-22,000 (fp16 headroom about 3x), the
    situation of the real SmolLM2-135M (about 25,000, 2.6x). fp16 stays finite on the probe
    batch; a fine-tune that grows activations a few times, or a batch with larger outliers,
    would not. Measured on a (4, 128) random batch, fp16 also pays for the large values in
    precision: a residual stream near 22,000 has an fp16 spacing of 16, and the LoRA gradient's
    direction departs from fp32's (the verdict shows it).
    """
    return _specimen("low-headroom", _layer_1_mlp_scaled(LOW_HEADROOM_DOWN_SCALE))


def attention_logit_growth_dir() -> Path:
    """A tiny Llama with huge attention scores, which bf16 cannot rank: attention-logit growth.

    `q_proj.weight` and `k_proj.weight` of every layer are multiplied by 64, so the
    pre-softmax attention scores are 4,096 times larger (hundreds instead of fractions).
    Attention-logit growth of this kind is a documented cause of low-precision training
    divergence (Dehghani et al. 2023, "Scaling Vision Transformers to 22 Billion Parameters";
    Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
    instabilities"; the fix there is QK-layernorm). With scores in the hundreds, bf16's 8-bit
    mantissa moves a score by about 1 and reorders the softmax: the LoRA gradient's direction
    departs from fp32's (cosine about 0.7-0.9) and the logits move by over half their range.
    fp16 (11-bit mantissa) departs less; fp32 is the reference.
    """
    def scale(model):
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(ATTENTION_QK_SCALE)
            layer.self_attn.k_proj.weight.mul_(ATTENTION_QK_SCALE)
    return _specimen("attention-logit-growth", scale)


def small_gradients_dir() -> Path:
    """A tiny Llama whose whole backward is 1,024 times smaller: gradients below fp16's range.

    `lm_head.weight` is multiplied by 2^-10. The forward barely changes (the logits are near
    zero either way: the loss is ln(512) = 6.24), but every gradient flowing back from the
    logits is 1,024 times smaller, so many LoRA gradient values fall under fp16's smallest
    subnormal (2^-24 = 6e-8) and come out exactly zero. This is the regime that motivated loss
    scaling (Micikevicius et al. 2018, "Mixed Precision Training": most activation gradients
    of an fp16 network lie below 2^-24); a GradScaler's 2^16 brings them back into range.
    """
    def scale(model):
        model.lm_head.weight.mul_(SMALL_GRADIENT_HEAD_SCALE)
    return _specimen("small-gradients", scale)


SPECIMENS = {
    "large-activation": large_activation_dir,
    "low-headroom": low_headroom_dir,
    "attention-logit-growth": attention_logit_growth_dir,
    "small-gradients": small_gradients_dir,
}


# --- LoRA set-ups with a precision choice -----------------------------------------------------


class LoRALinear(nn.Module):
    """A frozen Linear plus B(A(x)) * alpha / rank; A Kaiming, B zero (an identity start).

    The adapter computes in its own dtype and hands back the base's dtype, as PEFT does, so an
    fp32 adapter works on an fp16 or bf16 base.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dtype):
        super().__init__()
        self.base = base
        self.lora_A = nn.Linear(base.in_features, rank, bias=False,
                                device=base.weight.device, dtype=dtype)  # (r, in)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False,
                                device=base.weight.device, dtype=dtype)  # (out, r)
        self.scaling = alpha / rank
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x):
        h = self.lora_B(self.lora_A(x.to(self.lora_A.weight.dtype))) * self.scaling
        return self.base(x) + h.to(x.dtype)


def _attach(model, rank: int, alpha: float, dtype) -> None:
    for p in model.parameters():
        p.requires_grad = False
    targets = [(n, m) for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and not n.endswith("lm_head")]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(module, rank, alpha, dtype))


def apply_lora_fp16_adapters(model, rank: int = 8, alpha: float = 16):
    """Pure fp16: the model is cast to fp16 and the adapters are made in the model's dtype.

    Trained with a plain `torch.optim.AdamW`, the adapters have no fp32 master copy: AdamW's
    `eps=1e-8` is 0 in fp16 and its second moment underflows, so the first step divides by
    zero (LD305). A GradScaler cannot help either: it refuses to unscale fp16 gradients.
    """
    model.to(torch.float16)
    _attach(model, rank, alpha, torch.float16)


def apply_lora_fp32_adapters(model, rank: int = 8, alpha: float = 16, base_dtype: str = "fp16"):
    """Mixed precision done right: the frozen base in `base_dtype`, the trained adapters in fp32.

    The fp32 adapters are their own master weights, so AdamW updates them in fp32 (this is
    what PEFT does by default with `autocast_adapter_dtype=True`).
    """
    from ...inputs.pretrained import torch_dtype
    model.to(torch_dtype(base_dtype))
    _attach(model, rank, alpha, torch.float32)
