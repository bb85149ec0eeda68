"""One forward+backward per dtype on the probe batch, with hooks on every module.

What one pass records (`DtypePass`):

- per module (forward hooks, and a gradient hook on each output tensor): the largest absolute
  output value and the largest absolute gradient of that output, and whether either held
  inf/nan, with the order in which the module finished (forward) or received its gradient
  (backward). Modules finish inside-out, so the *first* module in forward order whose output
  is non-finite is the one that produced the inf, not its parents;
- the loss and, against the fp32 pass, the loss difference, the largest logit difference
  (absolute, and relative to the largest fp32 logit) and how often the top-1 token agrees;
- the trainable parameters' gradients against fp32: how many of the values that are non-zero
  in fp32 come out exactly zero (underflow, lost) or non-finite.

The passes run on the user's model itself, cast *in place* one dtype at a time and restored
exactly afterwards (`in_place.py`): each parameter's `.data` and `.grad` and each floating
buffer is put back as the very same tensor object, so values, dtypes, storage,
`requires_grad`, train/eval mode and the RNG states are as found. We cast in place rather than
deep-copying because hand-written
LoRA binds `module.forward` into closures: a deep copy of such a model still calls the
original's weights. While a pass runs, the model holds one cast copy of its floating tensors
(half the fp32 size in fp16/bf16) beside the kept fp32 originals; nothing else is copied.

A pass is `model.to(dtype)` semantics: every floating parameter and buffer in that dtype
(base and adapters alike), the loss as the model computes it (Hugging Face upcasts logits to
fp32 for the loss), no autocast and no loss scaling: what a "load in fp16 and train" run does
on its first step. The model is called, and its labels given, the way its own convention
says (`model.convention`: transformers' keywords, or nanoGPT's `idx`/`targets`). The model
runs in eval mode (no dropout) so that dtypes are compared on the same computation.

On a CPU, torch's fp16 kernels (and its bf16 ones, on a CPU without native bf16) take many
times fp32's; there the low-precision passes run with their matmuls and attention emulated as a
GPU computes them (`emulation.py`: fp32 arithmetic on the dtype's values, each result rounded
to the dtype), every other op in the real dtype; `Measurement.emulated` names those dtypes.
The fp32 pass runs first (`fp32_pass`) and may run on its own earlier in a check, when another
rule reads its logits (`figures.reference`); `measure` then continues from it.

A quantized base (QLoRA) cannot be loaded in another dtype, and casting the rest of it is not
what QLoRA training does: there a pass leaves every parameter as loaded (the adapters and, after
`prepare_model_for_kbit_training`, the norms and embeddings in fp32) and makes the quantized
layers compute in the pass's dtype (`quantized_state.computing_in`: bitsandbytes'
`compute_dtype`), so fp32 is the exact reference and the layers' configured compute dtype is
always one of the passes. `Measurement.quantized` says so in words.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

from ..convention import HF, LossConvention, call, logits_of, scored_loss
from ..convention import loss as model_loss
from ..memory import releasing
from ..quantized import numerics_note
from ..quantized_state import computing_in
from .in_place import cast_in_place, preserved
from .recorder import ModuleRecorder, ModuleStat, peak_of
from ...text import one_line

FP16_MAX = 65504.0  # the largest finite fp16 value
FP16_TINY = 2.0 ** -24  # the smallest fp16 subnormal: a value below half of it rounds to zero
DTYPES = ("fp32", "bf16", "fp16")  # pass order: the fp32 reference first, the slow fp16 last


@dataclass
class NumericsOptions:
    """The thresholds of the numerics rules: named, with defaults, never buried in a branch."""

    fp16_headroom: float = 4.0  # LD302: warn when a fp32 peak is within this factor of 65504
    top_modules: int = 5  # modules listed in a table / message
    # LD303 (and the verdict for fp16): a lower-precision pass departs from fp32 when ...
    loss_rtol: float = 0.05  # ... its loss differs by more than this share of the fp32 loss,
    grad_cos_min: float = 0.9  # ... its trainable gradient's cosine to fp32's is below this,
    logits_rtol: float = 0.25  # ... or a logit moves by more than this share of the largest one
    grad_lost_warn: float = 0.01  # LD304: share of non-zero fp32 gradient values fp16 may zero
    scaler_scale: float = 2.0 ** 16  # LD304: GradScaler's default initial scale
    adamw_lr: float = 1e-4  # LD305: the simulated optimizer step (torch's AdamW defaults otherwise)
    adamw_eps: float = 1e-8
    adamw_weight_decay: float = 0.01
    grad_sample_budget: int = 4_000_000  # trainable gradient values kept per dtype (strided)


@dataclass
class Trainable:
    """A trainable parameter as the user's code left it."""

    name: str
    dtype: str
    numel: int


@dataclass
class DtypePass:
    """One dtype's forward+backward on the probe batch."""

    dtype: str
    status: str = "ok"  # ok | unsupported (device cannot run it) | failed (the pass raised)
    error: str | None = None
    seconds: float = 0.0
    loss: float | None = None  # as the model computes it (Hugging Face upcasts logits to fp32)
    loss_in_dtype: float | None = None  # fp16: cross-entropy computed in fp16, as a bare loop might
    backward: bool = False  # False when nothing in the model is trainable
    modules: list[ModuleStat] = field(default_factory=list)  # in forward order
    # against the fp32 pass (None on fp32 itself)
    loss_abs_diff: float | None = None
    loss_rel_diff: float | None = None
    logits_max_abs_diff: float | None = None
    logits_rel_diff: float | None = None
    top1_agreement: float | None = None
    # trainable gradients against fp32 (sampled values; see NumericsOptions.grad_sample_budget)
    grad_nonzero_fp32: int = 0
    grad_lost: int = 0
    grad_nonfinite: int = 0
    grad_lost_by_param: dict[str, float] = field(default_factory=dict)
    grad_cosine: float | None = None  # direction of the trainable gradient against fp32

    @property
    def ran(self) -> bool:
        return self.status == "ok"

    @property
    def by_name(self) -> dict[str, ModuleStat]:
        return {m.name: m for m in self.modules}

    @property
    def first_bad_forward(self) -> ModuleStat | None:
        bad = [m for m in self.modules if not m.finite]
        return min(bad, key=lambda m: m.order) if bad else None

    @property
    def first_bad_backward(self) -> ModuleStat | None:
        bad = [m for m in self.modules if m.grad_finite is False]
        return min(bad, key=lambda m: m.grad_order) if bad else None

    @property
    def finite(self) -> bool:
        return (self.ran and self.first_bad_forward is None and self.first_bad_backward is None
                and self.loss is not None and math.isfinite(self.loss))

    @property
    def grad_lost_fraction(self) -> float:
        return self.grad_lost / self.grad_nonzero_fp32 if self.grad_nonzero_fp32 else 0.0

    def top(self, n: int, key: str = "peak") -> list[ModuleStat]:
        """The n modules with the largest finite forward (or gradient) peaks."""
        vals = [(getattr(m, key), m) for m in self.modules]
        vals = [(v, m) for v, m in vals if v is not None and math.isfinite(v)]
        return [m for _, m in sorted(vals, key=lambda vm: -vm[0])[:n]]


@dataclass
class Measurement:
    """Everything the numerics rules read: one `DtypePass` per dtype, fp32 first."""

    requested: tuple[str, ...]  # dtypes asked for (auto: all three, unsupported ones skipped)
    auto: bool
    device: str
    probe_shape: tuple[int, ...]
    probe_source: str
    passes: dict[str, DtypePass]
    trainable: list[Trainable]
    sample_stride: int = 1
    # "fp32" / "fp16" -> trainable parameter name -> its gradient, flattened and strided
    grad_samples: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    quantized: str | None = None  # on a quantized base: what a pass in a dtype means there
    emulated: tuple[str, ...] = ()  # dtypes whose matmuls and attention were emulated (CPU)

    @property
    def fp32(self) -> DtypePass:
        return self.passes["fp32"]

    def get(self, dtype: str) -> DtypePass | None:
        return self.passes.get(dtype)

    @property
    def fp32_peak(self) -> ModuleStat | None:
        top = self.fp32.top(1)
        return top[0] if top else None

    @property
    def fp32_grad_peak(self) -> ModuleStat | None:
        top = self.fp32.top(1, key="grad_peak")
        return top[0] if top else None


# --- the device ------------------------------------------------------------------------------


def dtype_support(dtype: str, device: str) -> str | None:
    """None when `device` runs a matmul forward+backward in `dtype`, else the reason it cannot."""
    import torch

    from ...inputs.pretrained import torch_dtype

    if dtype == "fp32":
        return None
    if device.startswith("cuda") and dtype == "bf16":
        try:
            ok = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older torch without the keyword
            ok = torch.cuda.is_bf16_supported()
        if not ok:
            return f"this GPU ({torch.cuda.get_device_name(device)}) has no native bf16"
    try:
        a = torch.ones(4, 4, dtype=torch_dtype(dtype), device=device, requires_grad=True)
        (a @ a).sum().backward()
    except Exception as exc:  # noqa: BLE001 - any failure means "this dtype does not run here"
        return f"{dtype} matmul does not run on {device}: {one_line(exc)}"
    return None


def resolve_dtypes(dtypes: tuple[str, ...] | None) -> tuple[tuple[str, ...], bool]:
    """The dtypes to check in pass order, and whether they were chosen automatically."""
    from ...inputs.pretrained import DTYPES as ALIASES

    if not dtypes:
        return DTYPES, True
    names = {ALIASES[d.lower()] for d in dtypes}
    canon = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
    chosen = {canon[n] for n in names}
    return tuple(d for d in DTYPES if d in chosen), False


# --- one pass ----------------------------------------------------------------------------------


@dataclass
class Reference:
    """What the fp32 pass leaves for the other dtypes to be compared against."""

    logits: Any  # (B, T, V) fp32
    top1: Any  # (B, T)
    logits_peak: float
    loss: float | None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize(device)


@contextmanager
def in_dtype(model, dtype, quantized: bool):
    """`model` in `dtype` for one pass: cast in place; a quantized base keeps every parameter
    as loaded and only its quantized layers compute in `dtype`."""
    if not quantized:
        with cast_in_place(model, dtype):
            yield
        return
    with cast_in_place(model, None), computing_in(model, dtype):
        yield


@releasing
def run_pass(model, probe: dict, dtype: str, device: str, trainable: list[tuple[str, Any]],
             stride: int, ref: Reference | None, conv: LossConvention = HF,
             quantized: bool = False,
             emulate: bool = False) -> tuple[DtypePass, Reference | None, dict]:
    """One forward+backward of `model` cast to `dtype` (on a quantized base: its quantized
    layers computing in `dtype`); returns the pass, the fp32 reference (when `ref` is None,
    i.e. this is the fp32 pass) and the sampled trainable gradients. `emulate`: the matmuls
    and attention run in fp32 on the `dtype` values, results rounded back (`emulation.py`).

    A model without a loss of its own is scored with next-token cross-entropy in fp32, as
    transformers computes it (`convention.loss`)."""
    import torch

    from ...inputs.pretrained import torch_dtype

    result = DtypePass(dtype)
    grads: dict[str, Any] = {}
    new_ref = None
    recorder = ModuleRecorder(model)
    _sync(device)
    start = time.perf_counter()
    try:
        with in_dtype(model, torch_dtype(dtype), quantized), recorder, \
                _emulating(torch_dtype(dtype), emulate):
            out = call(model, probe, conv, labels=True, use_cache=False)
            logits = logits_of(out, tuple(probe["input_ids"].shape))  # (B, T, V)
            loss = model_loss(out, probe, conv, logits)
            del out
            result.loss = float(loss.detach())
            if ref is None:
                ref_logits = logits.detach().float()
                new_ref = Reference(ref_logits, ref_logits.argmax(-1),
                                     float(peak_of(ref_logits)), result.loss)
            else:
                _compare_logits(result, logits.detach(), ref)
            if dtype == "fp16":  # LD304's evidence: the loss a bare fp16 loop would compute
                result.loss_in_dtype = _loss_in_dtype(logits.detach(), probe, conv)
            del logits
            if loss.requires_grad:
                loss.backward()
                result.backward = True
            del loss
            for name, p in trainable:
                g = p.grad
                sample = (g.detach().reshape(-1)[::stride] if g is not None
                          else torch.zeros_like(p.detach().reshape(-1)[::stride]))
                grads[name] = sample.clone()
            _sync(device)
    except Exception as exc:  # noqa: BLE001 - a dtype that cannot run is a finding's reason
        result.status, result.error = "failed", one_line(exc)
    result.seconds = time.perf_counter() - start
    result.modules = recorder.stats() if result.ran else []
    return result, new_ref, grads


def _emulating(dtype, emulate: bool):
    """The emulation mode for a pass in `dtype`, or a block that does nothing."""
    if not emulate:
        return nullcontext()
    from .emulation import Emulated
    return Emulated(dtype)


def _loss_in_dtype(logits, probe, conv: LossConvention = HF) -> float | None:
    """Cross-entropy computed in the logits' own dtype (no upcast), read as the model reads
    its labels (next-token, shifted or not)."""
    try:
        loss = scored_loss(logits, probe, conv, upcast=False)
    except Exception:  # noqa: BLE001 - a dtype without a cross-entropy kernel here
        return None
    return float(loss)


def _compare_logits(result: DtypePass, logits, ref: Reference) -> None:
    import torch

    if ref.loss is not None and result.loss is not None:
        result.loss_abs_diff = abs(result.loss - ref.loss)
        result.loss_rel_diff = result.loss_abs_diff / max(abs(ref.loss), 1e-12)
    worst, agree = torch.zeros((), device=logits.device), 0
    for b in range(logits.shape[0]):  # row by row: one (T, V) fp32 temporary at a time
        row = logits[b].float()  # exact: argmax reads the same values (fp16's argmax is slow)
        agree += int((row.argmax(-1) == ref.top1[b]).sum())
        diff = (row - ref.logits[b]).abs_().max()
        worst = torch.maximum(worst, diff)  # nan propagates
    result.logits_max_abs_diff = float(worst)
    result.logits_rel_diff = result.logits_max_abs_diff / max(ref.logits_peak, 1e-12)
    result.top1_agreement = agree / ref.top1.numel()


def _compare_grads(result: DtypePass, grads: dict, ref_grads: dict) -> None:
    import torch

    dot = norm = ref_norm = 0.0
    for name, g in grads.items():
        r = ref_grads[name].double()  # float64: squares of large gradients must not overflow
        gf = g.double()
        if torch.isfinite(gf).all():
            dot += float((gf * r).sum())
            norm += float((gf * gf).sum())
        else:
            dot = norm = math.nan
        ref_norm += float((r * r).sum())
        nonzero = r != 0
        n = int(nonzero.sum())
        lost = int((nonzero & (g == 0)).sum())
        result.grad_nonzero_fp32 += n
        result.grad_lost += lost
        result.grad_nonfinite += int((~torch.isfinite(g)).sum())
        if n:
            result.grad_lost_by_param[name] = lost / n
    if ref_norm > 0 and norm == norm:
        result.grad_cosine = dot / math.sqrt(ref_norm * norm) if norm > 0 else 0.0
    elif ref_norm > 0:
        result.grad_cosine = math.nan


# --- all passes --------------------------------------------------------------------------------


@dataclass
class ReferencePass:
    """The fp32 pass with what the other dtypes are compared against, measured first (LD401
    reads its logits when the numerics run anyway: `figures.reference`)."""

    result: DtypePass
    ref: Reference | None  # None when the pass failed
    grads: dict  # the trainable gradients, sampled every `stride` values
    trainable: list[tuple[str, Any]]
    stride: int


def fp32_pass(model, probe: dict, *, device: str, options: NumericsOptions | None = None,
              convention: LossConvention = HF) -> ReferencePass:
    """The fp32 pass alone (the model cast to fp32 where it is not; a quantized base's layers
    computing in fp32), in eval mode, the model restored after it."""
    options = options or NumericsOptions()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    total = sum(p.numel() for _, p in trainable)
    stride = max(1, math.ceil(total / options.grad_sample_budget))
    with preserved(model):
        result, ref, grads = run_pass(model, probe, "fp32", device, trainable, stride, None,
                                      convention, numerics_note(model) is not None)
    return ReferencePass(result, ref, grads, trainable, stride)


def measure(model, probe: dict, *, dtypes: tuple[str, ...] | None, device: str,
            options: NumericsOptions | None = None,
            on_pass: Callable[[DtypePass], None] | None = None,
            convention: LossConvention = HF,
            emulate: tuple[str, ...] | None = None,
            reference: ReferencePass | None = None) -> Measurement:
    """Run the fp32 reference pass (unless `reference` is that pass, already run on this model
    as it is now) and one pass per other dtype, one cast at a time.

    `on_pass` is called with each finished pass (for a progress bar); `convention` says how
    the model is called and how its loss reads labels (`model.convention.detect`); `emulate`
    names the dtypes whose matmuls and attention are emulated in fp32 (None: the device's
    slow ones, `emulation.emulated_dtypes`; () runs every dtype for real).
    """
    options = options or NumericsOptions()
    order, auto = resolve_dtypes(dtypes)
    quantized = numerics_note(model)
    if quantized is not None:  # the dtype the quantized layers are configured to compute in
        order = tuple(d for d in DTYPES if d in order or d in quantized[1])
    if emulate is None:
        from .emulation import emulated_dtypes
        emulate = emulated_dtypes(device)
    start = time.perf_counter()
    fp32 = reference or fp32_pass(model, probe, device=device, options=options,
                                  convention=convention)
    m = Measurement(requested=order, auto=auto, device=device,
                    probe_shape=tuple(probe["input_ids"].shape),
                    probe_source=str(probe.get("source", "")), passes={"fp32": fp32.result},
                    trainable=[Trainable(n, _dtype_name(p.dtype), p.numel())
                               for n, p in fp32.trainable],
                    sample_stride=fp32.stride, quantized=quantized and quantized[0],
                    grad_samples={"fp32": fp32.grads})
    if on_pass:
        on_pass(fp32.result)
    with preserved(model):
        for dtype in [d for d in order if d != "fp32"]:
            reason = dtype_support(dtype, device)
            if reason:
                result = m.passes[dtype] = DtypePass(dtype, status="unsupported", error=reason)
            elif fp32.ref is None or not m.fp32.ran:
                result = m.passes[dtype] = DtypePass(
                    dtype, status="failed", error="not run: the fp32 reference pass failed")
            else:
                result, _, grads = run_pass(model, probe, dtype, device, fp32.trainable,
                                            fp32.stride, fp32.ref, convention,
                                            quantized is not None, dtype in emulate)
                m.passes[dtype] = result
                if dtype in emulate:
                    m.emulated += (dtype,)
                if result.ran:
                    _compare_grads(result, grads, fp32.grads)
                    if dtype == "fp16":
                        m.grad_samples["fp16"] = grads
                del grads
            if on_pass:
                on_pass(result)
    m.seconds = time.perf_counter() - start + (fp32.result.seconds if reference else 0.0)
    return m


def _dtype_name(dtype) -> str:
    return {"torch.float32": "fp32", "torch.float16": "fp16",
            "torch.bfloat16": "bf16"}.get(str(dtype), str(dtype).replace("torch.", ""))
