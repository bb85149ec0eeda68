"""LD116-LD117: labels held against the loss of the model they are for.

Which labels are right depends on the model: a transformers model shifts them inside and
ignores -100; a nanoGPT-style `forward(idx, targets)` does not shift (the targets are the next
tokens already) and ignores -1. `check-dataset --model MODEL` (a directory or the user's model
code) measures the model's convention (`model.convention`); without it the HF convention is
assumed and the report's header says so. LD106 (in `masking`) flags labels shifted by hand for
a model that shifts; LD116 flags the opposite, labels left unshifted for a model that does
not; LD117 flags mask values the model's loss does not ignore. Both read the shared masking
pass (`masking.analysis`).
"""

from __future__ import annotations

from ..findings import Severity
from ..masking.analysis import analysis
from ..masking.wording import counted
from ..rules import Outcome, SkipCheck, rule


def convention(ctx):
    """The model's measured convention, or the HF one assumed (no model given)."""
    from ..model.convention import HF
    return getattr(ctx, "convention", None) or HF


def model_word(ctx) -> str:
    """The model's name, or what is assumed without one."""
    name = getattr(ctx, "model_name", None) if getattr(ctx, "has_model", False) else None
    return name or "a transformers model"


def _how(conv) -> str:
    return "measured" if conv.measured else "HF convention assumed; --model measures yours"


@rule("LD116", "labels-not-shifted-for-model", command="dataset", severity=Severity.ERROR,
      needs_tokenizer=False)
def labels_not_shifted_for_model(ctx) -> Outcome:
    """Labels are aligned with input_ids although the model's loss does not shift them.

    ## What it does
    With `--model` (a directory, or your model code as `file.py:NAME`), measures how the
    model's loss reads labels. When it scores the logits at position t against the label at
    t itself (nanoGPT's `forward(idx, targets)`: the targets must already be the next
    tokens), counts the samples of your dataset code whose supervised labels are the input id
    at their own position (`labels[t] == input_ids[t]`). Skips for a model that shifts inside
    (transformers models, MiniMind): there LD106 checks the opposite mistake.

    ## Why is this bad?
    A model that does not shift is trained to predict the token it is reading: the copy task.
    The loss drops to almost zero within a few hundred steps, every curve looks healthy, and
    the model has learnt nothing it can generate with. An error: the whole run is wasted.

    ## Example
    ```python
    x = torch.tensor(ids)
    y = torch.tensor(labels)          # aligned with x: right for transformers, not here
    logits, loss = model(x, y)        # GPT.forward(idx, targets) does not shift
    ```

    ## Use instead
    ```python
    x = torch.tensor(ids[:-1])
    y = torch.tensor(labels[1:])      # the next token at every position, -1 where masked
    ```
    """
    conv = convention(ctx)
    if not conv.has_loss or conv.shifts:
        raise SkipCheck(f"{model_word(ctx)} shifts labels itself ({_how(conv)}): LD106 checks "
                        f"labels shifted by hand")
    a = analysis(ctx)
    c = a.needs_comparison()
    bad = c.unshifted
    judged = c.shifted.count + bad.count  # samples that supervise, read one way or the other
    name = model_word(ctx)
    if not bad:
        return Outcome(summary=f"labels are the next tokens in {c.shifted.count} of {judged} "
                               f"supervising samples, as {name} needs (it does not shift)")
    finding = a.finding(labels_not_shifted_for_model, bad, counted(
        bad, "supervising sample", f" hold labels aligned with input_ids (labels[t] == "
        f"input_ids[t]), but {name}'s loss does not shift them: it is trained to predict the "
        f"token it is reading, a copy task", of=judged, then="; "),
        fix=f"shift by one for this model: x = ids[:-1], {conv.labels_arg or 'targets'} = "
            f"labels[1:] (the next token at every position)",
        judged=judged, convention=conv.to_dict())
    return Outcome([finding], summary=f"labels aligned with input_ids in {bad.count} of "
                                      f"{judged} supervising samples; {name} does not shift")


@rule("LD117", "mask-value-not-ignored-by-loss", command="dataset", severity=Severity.ERROR,
      needs_tokenizer=False)
def mask_value_not_ignored_by_loss(ctx) -> Outcome:
    """Labels mask positions with a value the model's loss does not ignore.

    ## What it does
    Records every negative value your dataset code puts in the labels to mask a position
    (-100, -1, ...) and holds it against the ignore index of the model's loss: measured with
    `--model` (a directory or your model code), transformers' -100 without it.

    ## Why is this bad?
    A masked position only drops out of the loss when its value is the loss's
    `ignore_index`. Any other negative value is an index outside the vocabulary: on the first
    batch `cross_entropy` raises `Target -100 is out of bounds` (on a GPU, a device-side
    assert that kills the process). nanoGPT-style code ignores -1, transformers ignores -100:
    labels written for one crash the other. An error: the run cannot start.

    ## Example
    ```python
    labels = [-100] * len(prompt_ids) + reply_ids   # for GPT.forward(idx, targets), which
                                                     # calls cross_entropy(..., ignore_index=-1)
    ```

    ## Use instead
    ```python
    IGNORE = -1                                      # the model's own ignore_index
    labels = [IGNORE] * len(prompt_ids) + reply_ids
    ```
    """
    conv = convention(ctx)
    a = analysis(ctx)
    c = a.needs_comparison()
    ignore = conv.ignore_index if conv.has_loss else -100
    name = model_word(ctx)
    findings = []
    for value, lines in sorted(c.mask_values.items()):
        if value == ignore:
            continue
        ignores = f"it ignores {ignore}" if ignore is not None else \
            "it ignores neither -100 nor -1"
        findings.append(a.finding(mask_value_not_ignored_by_loss, lines, counted(
            lines, "sample", f" mask labels with {value}, which {name}'s loss does not ignore "
            f"({ignores}, {_how(conv)}): cross-entropy raises 'Target {value} is out of bounds' "
            f"on the first batch (a device-side assert on a GPU)", of=c.samples, then="; "),
            fix=f"mask with {ignore}, the ignore_index of the model's loss" if ignore is not None
            else "mask with the loss's ignore_index, or pass ignore_index to its cross_entropy",
            value=value, ignore_index=ignore, samples=c.samples))
    used = ", ".join(f"{v} in {lines.count}" for v, lines in sorted(c.mask_values.items()))
    if findings:
        return Outcome(findings, summary=f"mask values {used} of {c.samples} samples; the loss "
                                         f"ignores {ignore}")
    if not used:
        return Outcome(summary=f"no label is negative in {c.samples} samples; the loss ignores "
                               f"{ignore}")
    return Outcome(summary=f"mask value {used} of {c.samples} samples, which the loss ignores")


RULES = [labels_not_shifted_for_model, mask_value_not_ignored_by_loss]
