"""Numerics: the same probe batch through the adapted model in fp32, fp16 and bf16.

`passes.py` runs one forward+backward per dtype, casting the user's model in place and
restoring it exactly (`in_place.py`), with `recorder.py`'s hooks on every module (the largest
absolute output and output-gradient of each module, the first module whose output or gradient
is inf/nan); it compares the loss, the logits and the trainable gradients with fp32 (those fp16
loses). On a CPU, `emulation.py` runs the fp16 (and, without native bf16, the bf16) matmuls and
attention in fp32 on the dtype's values, rounding each result back, as a GPU computes them: at
fp32's speed rather than that of torch's slow CPU fp16 kernels.
`verdict.py` turns those figures into the per-dtype verdict ("trains in: fp32 ✓ bf16 ✓ fp16 ✗
(...)"); `figures.py` measures them once per run and derives what the rules read (a GradScaler's
estimate, the adapters' and the base's lost gradients, a simulated AdamW step).
`specimens.py` builds the small constructed models and LoRA set-ups with documented numerics
problems that the tests, the fixtures and the reference runs use. The rules themselves live in
`checks/numerics.py`.
"""

from .passes import FP16_MAX, FP16_TINY, DtypePass, Measurement, NumericsOptions, measure
from .recorder import ModuleStat

__all__ = ["FP16_MAX", "FP16_TINY", "DtypePass", "Measurement", "ModuleStat", "NumericsOptions",
           "measure"]
