"""fp16 (and bf16) passes at fp32 speed on a CPU: matmuls and attention emulated as a GPU runs them.

A GPU's fp16/bf16 matmuls and attention kernels (cuBLAS, tensor cores, flash attention) read
operands stored in the low-precision dtype, accumulate wider (fp32) and store the result in
the low-precision dtype again. Torch's CPU kernels for fp16, and for bf16 on a CPU without
native bf16 instructions, do the same arithmetic many times slower than fp32: measured on a
2-core AMD EPYC (AVX512, no AVX512-FP16), a fp16 forward+backward of SmolLM2-135M takes about
29 times a fp32 one, almost all of it in `mm` and the attention backward.

`Emulated(dtype)` is a dispatch mode that catches those ops (`EMULATED_OPS`) while a pass runs
with the model cast to `dtype`: their operands, already in `dtype`, are upcast exactly to fp32,
the op runs in fp32, and each result is rounded back to `dtype` (a result past fp16's 65,504
becomes inf there, as the GPU's does). Every other op (elementwise, norms, softmax, the loss,
the casts) runs in the real dtype, so overflow, underflow and the module that first holds an
inf are measured by the dtype itself. An op whose operands are not all in `dtype` is left to
torch as it is: it raises (or promotes) exactly as in a real pass.

`emulated_dtypes(device, real)` says which dtypes a pass emulates: on a CPU, fp16 unless the
CPU has native fp16 matmuls, bf16 unless it has native bf16 ones; never on a GPU, never with
`real` (`--real-dtypes`); `verdict.measured_how` is the report's words for it. The emulated figures
agree with real fp16/bf16 passes to the last digits (accumulation order); verdicts, findings
and the module that overflows are the same (tests/model/test_numerics_emulation.py).
"""

from __future__ import annotations

from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode


def _emulated_ops() -> dict[Any, tuple[frozenset[int], frozenset[int]]]:
    """aten op -> (its operands, and its results, that the real kernel keeps in fp32)."""
    import torch

    aten = torch.ops.aten
    none = (frozenset(), frozenset())
    ops: dict[Any, tuple[frozenset[int], frozenset[int]]] = {
        op.default: none for op in (aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.addbmm,
                                    aten.mv, aten.addmv, aten.dot)}
    flash = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if flash is not None:  # forward: (output, logsumexp); backward reads that logsumexp
        ops[flash.default] = (frozenset(), frozenset({1}))
        ops[aten._scaled_dot_product_flash_attention_for_cpu_backward.default] = (
            frozenset({5}), frozenset())
    return ops


EMULATED_OPS: dict[Any, tuple[frozenset[int], frozenset[int]]] = {}


class Emulated(TorchDispatchMode):
    """Within the block, `EMULATED_OPS` on `dtype` operands run in fp32, results rounded back."""

    def __init__(self, dtype):
        super().__init__()
        if not EMULATED_OPS:
            EMULATED_OPS.update(_emulated_ops())
        self.dtype = dtype
        self.calls = 0  # ops emulated (for the tests)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        fp32 = EMULATED_OPS.get(func)
        if fp32 is None or not self._all_low(fp32[0], args, kwargs):
            return func(*args, **kwargs)
        self.calls += 1
        out = func(*[self._up(a) for a in args], **{k: self._up(a) for k, a in kwargs.items()})
        if not isinstance(out, tuple):
            return out.to(self.dtype)
        return tuple(o if i in fp32[1] or o is None else o.to(self.dtype)
                     for i, o in enumerate(out))

    def _all_low(self, fp32: frozenset[int], args, kwargs) -> bool:
        """True when every floating operand is in the pass's dtype (fp32 where the kernel
        takes fp32): anything else is left to torch, to raise or promote as it does."""
        import torch

        seen = False
        for i, a in enumerate((*args, *kwargs.values())):
            if isinstance(a, torch.Tensor) and a.is_floating_point():
                want = torch.float32 if i in fp32 else self.dtype
                if a.dtype != want or a.device.type != "cpu":
                    return False
                seen = seen or i not in fp32
        return seen

    def _up(self, a):
        import torch

        if isinstance(a, torch.Tensor) and a.dtype == self.dtype:
            return a.float()
        return a


def native_on_cpu(dtype: str) -> bool:
    """Whether this CPU has native matmul kernels for `dtype` (oneDNN with AVX512-BF16/AMX for
    bf16, AVX512-FP16/AMX-FP16 for fp16): then the real dtype runs fast and is not emulated."""
    import torch

    if dtype == "fp32":
        return True
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        check = {"bf16": torch.ops.mkldnn._is_mkldnn_bf16_supported,
                 "fp16": torch.ops.mkldnn._is_mkldnn_fp16_supported}[dtype]
        return bool(check())
    except (AttributeError, KeyError, RuntimeError):
        return False


def emulated_dtypes(device: str, real: bool = False) -> tuple[str, ...]:
    """The dtypes a pass on `device` emulates: the CPU's slow ones, unless `real`."""
    if real or not device.startswith("cpu"):
        return ()
    return tuple(d for d in ("bf16", "fp16") if not native_on_cpu(d))
