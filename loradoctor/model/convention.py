"""How a causal LM reads its labels and what its forward returns, measured once per run.

Models differ, and several rules depend on it:

- transformers models take `input_ids`, `attention_mask`, `labels`; they shift the labels
  inside (`labels` aligned with `input_ids`), ignore -100 and return an object with `.logits`
  and `.loss`;
- nanoGPT-style models take `forward(idx, targets)`; they do *not* shift (`targets` are the
  next tokens already), ignore -1, return `(logits, loss)`, and without targets compute the
  logits of the last position only;
- others return a bare logits tensor (the loss is the training loop's), or a dict.

`detect(model, probe)` reads the forward's signature, then calls it on a slice of the probe
batch without labels and with them, and compares the loss it returns with cross-entropy
computed from its own logits: shifted and unshifted, then with some labels set to -100 and to
-1. Every place that runs a model goes through `call()`, `logits()` and `loss()` with the
`LossConvention` found, so each rule sees the model the way its training loop does. The
`HF` convention is the default, and the calls it makes are the ones transformers models take.

On CUDA a label the loss cannot take is a device-side assert that poisons the process, so
there an ignore index is only tried when the model's own `cross_entropy` call named it; on
CPU every candidate is tried and a crash is simply the answer "not ignored".
"""

from __future__ import annotations

import contextlib
import inspect
import math
from ..text import one_line
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator

IGNORE_CANDIDATES = (-100, -1)  # HF's ignore index, nanoGPT's
LOSS_RTOL = 1e-3  # the model's loss "is" a candidate cross-entropy within this share of it
SEPARATION = 10.0  # ... and lies this many times nearer to it than to the other reading
DETECT_SHAPE = (2, 32)  # (rows, tokens) of the probe batch used to detect: a few cheap calls
INPUT_NAMES = ("input_ids", "idx", "tokens", "token_ids", "input", "inputs", "x", "ids")
LABEL_NAMES = ("labels", "targets", "target", "label", "lm_labels", "y")
EXTRA_NAMES = ("use_cache",)  # keywords passed only to a forward that takes them
OUTPUT_WORDS = {"hf": "HF-style output", "tuple": "returns (logits, loss)",
                "tensor": "returns bare logits", "dict": "returns a dict"}


@dataclass(frozen=True)
class LossConvention:
    """How one model is called and how its loss reads labels.

    `shifts` and `ignore_index` describe the model's own loss; for a model that computes none
    (`has_loss` false) they describe how loradoctor scores it: next-token cross-entropy,
    shifted, -100 ignored, as transformers does. `measured` is false for the assumed HF
    convention (no model given, or a forward that could not be probed).
    """

    output: str = "hf"  # hf | tuple | tensor | dict
    input_arg: str = "input_ids"
    labels_arg: str | None = "labels"  # the keyword forward takes labels by; None: takes none
    mask_arg: bool = True  # forward takes attention_mask
    extras: frozenset = frozenset(EXTRA_NAMES)  # of EXTRA_NAMES, the keywords forward takes
    has_loss: bool = True  # forward returns a loss when given labels
    shifts: bool = True  # its loss scores logits[t] against labels[t + 1]
    ignore_index: int | None = -100  # None: ignores neither -100 nor -1
    last_only: bool = False  # without labels, logits for the last position only
    measured: bool = False
    note: str | None = None  # what could not be measured, and why
    evidence: dict = field(default_factory=dict, compare=False)  # the measured losses

    @property
    def ignores(self) -> str:
        if self.ignore_index is None:
            return "ignores neither -100 nor -1"
        return f"ignores {self.ignore_index}"

    def describe(self) -> str:
        """The report header's line: `HF-style output, shifts labels itself, ignores -100`."""
        if not self.measured:
            assumed = ("HF convention assumed: labels aligned with input_ids, shifted inside "
                       "the model, -100 ignored")
            return f"{assumed} ({self.note})" if self.note else assumed
        parts = [OUTPUT_WORDS.get(self.output, self.output)]
        if not self.has_loss:
            parts.append("computes no loss (scored as next-token cross-entropy, shifted, -100 "
                         "ignored)")
        else:
            parts.append("shifts labels itself" if self.shifts else
                         f"does not shift labels ({self.labels_arg} are the next tokens)")
            parts.append(self.ignores)
        if self.last_only:
            parts.append("last-position logits without labels")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["extras"] = sorted(self.extras)
        out["description"] = self.describe()
        return out


HF = LossConvention()


# --- calling a model ---------------------------------------------------------------------


def call(model, batch: dict, conv: LossConvention = HF, *, labels: bool = False, **extra):
    """`model(...)` with the batch's `input_ids` (and `attention_mask`, `labels`) as it takes them.

    `batch["labels"]` is aligned with `input_ids` (-100 where nothing is supervised, the HF
    way); `model_labels()` turns it into what this model's loss expects. `extra` keywords
    (`use_cache=False`) are passed only to a forward that takes them.
    """
    kwargs = {conv.input_arg: batch["input_ids"]}
    if conv.mask_arg and batch.get("attention_mask") is not None:
        kwargs["attention_mask"] = batch["attention_mask"]
    if labels and conv.labels_arg:
        kwargs[conv.labels_arg] = model_labels(batch, conv)
    kwargs.update({k: v for k, v in extra.items() if k in conv.extras})
    return model(**kwargs)


def model_labels(batch: dict, conv: LossConvention = HF):
    """The probe's aligned labels as this model's loss reads them (the next tokens, -1, ...)."""
    import torch

    y = batch["labels"]  # (B, T), aligned with input_ids, -100 = not supervised
    if not conv.has_loss or (conv.shifts and conv.ignore_index == -100):
        return y
    # A loss that ignores nothing cannot be told to skip a position: token 0 stands in (the
    # last position of an unshifted reading; a probe's labels hold no -100).
    fill = conv.ignore_index if conv.ignore_index is not None else 0
    y = y.masked_fill(y == -100, fill) if conv.ignore_index != -100 else y
    if conv.shifts:
        return y
    # A model that does not shift scores logits[t] against labels[t]: give it the next token.
    pad = torch.full_like(y[:, :1], fill)
    return torch.cat([y[:, 1:], pad], dim=1)


def logits_of(out, shape: tuple[int, ...] | None = None):
    """The logits in a forward's output: `.logits`, `["logits"]`, the first of a tuple, or it.

    `shape` is the input's (B, T): logits flattened to (B*T, V), as some small GPTs return
    them with targets, are put back to (B, T, V).
    """
    if hasattr(out, "logits"):
        t = out.logits
    elif isinstance(out, dict):
        t = out.get("logits", next(iter(out.values()), None))
    elif isinstance(out, (tuple, list)):
        t = out[0]
    else:
        t = out
    if shape is not None and t is not None and t.dim() == 2 and len(shape) == 2 \
            and t.shape[0] == shape[0] * shape[1]:
        t = t.view(shape[0], shape[1], -1)
    return t


def own_loss(out):
    """The loss a forward returned (`.loss`, `["loss"]`, a 0-d tensor in a tuple), or None."""
    import torch

    if hasattr(out, "logits"):
        return getattr(out, "loss", None)
    if isinstance(out, dict):
        return out.get("loss")
    if isinstance(out, (tuple, list)):
        for t in out[1:]:
            if isinstance(t, torch.Tensor) and t.dim() == 0 and t.is_floating_point():
                return t
    return None


def logits(model, batch: dict, conv: LossConvention = HF, **extra):
    """(B, T, V) logits for every position (a model that gives the last one only without
    labels is called with them)."""
    out = call(model, batch, conv, labels=conv.last_only, **extra)
    return logits_of(out, tuple(batch["input_ids"].shape))


def loss(out, batch: dict, conv: LossConvention = HF, logits_=None):
    """The model's own loss, or (for a model that computes none) next-token cross-entropy."""
    own = own_loss(out) if conv.has_loss else None
    if own is not None:
        return own
    t = logits_ if logits_ is not None else logits_of(out, tuple(batch["input_ids"].shape))
    return cross_entropy(t, batch["labels"], shifts=True, ignore_index=-100)


def cross_entropy(logits_, labels, *, shifts: bool, ignore_index: int | None, upcast=True):
    """Mean cross-entropy of (B, T, V) logits against (B, T) labels, shifted or not."""
    import torch.nn.functional as F

    if shifts:
        logits_, labels = logits_[:, :-1], labels[:, 1:]
    x = logits_.reshape(-1, logits_.shape[-1])  # (B*T', V)
    if upcast:
        x = x.float()
    return F.cross_entropy(x, labels.reshape(-1),
                           ignore_index=ignore_index if ignore_index is not None else -100)


def scored_loss(logits_, batch: dict, conv: LossConvention = HF, upcast=True):
    """Cross-entropy the way this model's loss reads labels (`conv`), from its logits."""
    if not conv.has_loss:
        return cross_entropy(logits_, batch["labels"], shifts=True, ignore_index=-100,
                             upcast=upcast)
    return cross_entropy(logits_, model_labels(batch, conv), shifts=conv.shifts,
                         ignore_index=conv.ignore_index, upcast=upcast)


# --- detection ---------------------------------------------------------------------------


def signature(model) -> LossConvention:
    """What the forward's signature says (names of the inputs), before any call."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return replace(HF, note="forward has no readable signature: called as transformers "
                                "models are")
    names = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    hf = _is_transformers(model)
    input_arg = next((n for n in INPUT_NAMES if n in names), None)
    if input_arg is None:
        input_arg = names[0] if names and not hf else "input_ids"
    labels_arg = next((n for n in LABEL_NAMES if n in names), None)
    if labels_arg is None and (hf or var_kw):
        labels_arg = "labels"  # a **kwargs forward may take them (and may swallow them)
    mask = "attention_mask" in names or (hf and var_kw)
    extras = frozenset(n for n in EXTRA_NAMES if n in names or (hf and var_kw))
    return LossConvention(input_arg=input_arg, labels_arg=labels_arg, mask_arg=mask,
                          extras=extras)


def _is_transformers(model) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(model, PreTrainedModel)


def detect(model, probe: dict) -> LossConvention:
    """Measure how `model` is called and how its loss reads labels (see the module docstring).

    Runs in eval mode without gradients and puts back every module's mode and the RNG
    states. Never raises: a forward that fails leaves what the signature says, with a note.
    """
    import torch

    from .safety import rng_preserved

    conv = signature(model)
    rows, length = DETECT_SHAPE
    ids = probe["input_ids"][:rows, :length].contiguous()  # user code may .view() it
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    modes = [(m, m.training) for m in model.modules()]
    try:
        with rng_preserved(0), torch.no_grad():
            model.eval()
            return _measure(model, batch, conv, ids)
    except Exception as exc:  # noqa: BLE001 - the model's forward raised: the rules say why
        return replace(conv, note=f"the forward raised {one_line(exc)}; called as its "
                                  f"signature says, loss assumed HF-style")
    finally:
        for m, training in modes:
            m.training = training


def _measure(model, batch, conv, ids) -> LossConvention:
    shape = tuple(ids.shape)
    plain = call(model, batch, conv, labels=False)
    kind = _kind(plain)
    full = logits_of(plain, shape)
    last_only = full is not None and full.dim() == 3 and full.shape[1] == 1 and shape[1] > 1
    conv = replace(conv, output=kind, last_only=last_only, measured=True)
    if not conv.labels_arg:
        return replace(conv, has_loss=False)
    if last_only:  # the logits of every position come with labels only
        full = logits_of(model(**_kwargs(batch, conv, ids)), shape)
    # Labels that tell the two readings apart: each position's own top token. Read unshifted
    # they are what the logits already predict (a low loss), read shifted they are scored
    # against the previous position's logits (a loss near that of random labels).
    labels = full.argmax(-1).contiguous()  # (B, T)
    with _cross_entropy_spy() as seen:
        out = model(**_kwargs(batch, conv, labels))
    own = own_loss(out)
    if own is None:
        return replace(conv, has_loss=False)
    full = logits_of(out, shape)
    value = float(own)
    candidates = {"shifted": _ce(full, labels, True, None),
                  "unshifted": _ce(full, labels, False, None)}
    evidence = {"loss": value, **candidates}
    match = _closest(value, candidates)
    if match is None:
        return replace(conv, evidence=evidence, note=(
            f"its loss {value:.4g} is neither the shifted ({candidates['shifted']:.4g}) nor the "
            f"unshifted ({candidates['unshifted']:.4g}) cross-entropy of its logits; used as "
            f"it is, labels passed aligned"))
    shifts = match == "shifted"
    tries = [v for v in seen if isinstance(v, int)]
    on_cpu = ids.device.type == "cpu"
    tries += [v for v in IGNORE_CANDIDATES if v not in tries and on_cpu]
    ignore = None
    for marker in tries:
        marked = labels.clone()
        marked[:, 1::3] = marker  # a third of the positions carry the marker
        try:
            out2 = model(**_kwargs(batch, conv, marked))
            got = float(own_loss(out2))
        except Exception:  # noqa: BLE001 - the loss cannot take this value: not ignored
            evidence[f"loss_ignoring_{marker}"] = None
            continue
        want = _ce(logits_of(out2, shape), marked, shifts, marker)
        evidence[f"loss_ignoring_{marker}"] = got
        if _close(got, want):
            ignore = marker
            break
    note = None
    if ignore is None and not on_cpu and not seen:
        note = ("its cross-entropy call was not seen and on a GPU an index it does not ignore "
                "is a device-side assert, so no ignore index was tried")
    return replace(conv, has_loss=True, shifts=shifts, ignore_index=ignore, evidence=evidence,
                   note=note)


def _kwargs(batch, conv, labels) -> dict:
    kwargs = {conv.input_arg: batch["input_ids"]}
    if conv.mask_arg:
        kwargs["attention_mask"] = batch["attention_mask"]
    kwargs[conv.labels_arg] = labels
    return kwargs


def _kind(out) -> str:
    import torch

    if hasattr(out, "logits"):
        return "hf"
    if isinstance(out, dict):
        return "dict"
    if isinstance(out, (tuple, list)):
        return "tuple"
    if isinstance(out, torch.Tensor):
        return "tensor"
    return type(out).__name__


def _ce(logits_, labels, shifts: bool, ignore: int | None) -> float:
    try:
        return float(cross_entropy(logits_, labels, shifts=shifts,
                                   ignore_index=ignore if ignore is not None else -100))
    except Exception:  # noqa: BLE001 - shapes that do not fit this reading
        return math.nan


def _close(a: float, b: float) -> bool:
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= LOSS_RTOL * max(abs(b), 1e-6)


def _closest(value: float, candidates: dict[str, float]) -> str | None:
    """The candidate the loss is, when it fits one clearly better than every other."""
    fits = sorted((abs(value - v), k) for k, v in candidates.items() if _close(value, v))
    if not fits:
        return None
    others = [abs(value - v) for k, v in candidates.items() if k != fits[0][1]]
    if any(d <= SEPARATION * max(fits[0][0], 1e-12) for d in others if math.isfinite(d)):
        return None  # two readings fit alike: cannot tell
    return fits[0][1]


@contextlib.contextmanager
def _cross_entropy_spy() -> Iterator[list]:
    """The `ignore_index` of every `F.cross_entropy` call in the block (nn.CrossEntropyLoss and
    transformers' loss go through it), so that on a GPU only an index the model names is tried."""
    import torch.nn.functional as F

    real = F.cross_entropy
    default = inspect.signature(real).parameters["ignore_index"].default
    seen: list[Any] = []

    def spy(*args, **kwargs):
        value = kwargs.get("ignore_index", args[4] if len(args) > 4 else default)
        if value not in seen:
            seen.append(value)
        return real(*args, **kwargs)

    F.cross_entropy = spy
    try:
        yield seen
    finally:
        F.cross_entropy = real
