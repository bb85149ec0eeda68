"""LD118-LD120: what the collator hands the model, against what the dataset built.

The masking rules judge labels against the chat template's truth; these hold the labels the
model really gets against the user's own intent and the batch's own structure. LD118 compares
the dataset's labels with the collator's (`masking.collated`: `--collator`, or the trainer's
collate_fn in the callback); LD119 reads packed rows' boundary labels (`masking.packing`);
LD120 measures whether the model's attention keeps packed samples apart
(`model.packed_attention`).
"""

from __future__ import annotations

from ..findings import Severity
from ..masking.collated import collated
from ..masking.packing import packing
from ..masking.wording import counted, plural
from ..rules import Outcome, SkipCheck, rule

COLLATOR_FIX = ("pad the dataset's labels instead of rebuilding them: "
                "DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100), or TRL's "
                "DataCollatorForLanguageModeling (it keeps a labels column)")


@rule("LD118", "collator-discards-dataset-labels", command="dataset", severity=Severity.ERROR,
      needs_tokenizer=False)
def collator_discards_dataset_labels(ctx) -> Outcome:
    """The collator changes which tokens the dataset's labels supervise.

    ## What it does
    Collates the dataset's first items with the collator your trainer uses (`--collator`,
    the API's `collator=`, or the trainer's own `collate_fn` in the callback), finds each
    item's tokens in the collated row, and compares the labels position by position: masked
    tokens the collator trains (the prompt, the item's padding), supervised tokens it masks
    (reply tokens, end-of-turn tokens). Names the collator, the counts in each direction and
    the items, with a token view of the first changed item (the collator's labels against the
    dataset's, drawn as the truth).

    ## Why is this bad?
    A dataset that masks the prompt with -100 says what it means to train. A collator that
    rebuilds `labels` from `input_ids` (`DataCollatorForLanguageModeling(tokenizer,
    mlm=False)`, still in many scripts) throws that away: every prompt token is trained and
    the batch alone looks like a run that trains on the whole conversation on purpose. Nothing
    fails; the model learns to write prompts. A collator that masks by the pad id masks every
    end-of-turn token when the pad token is the end-of-turn token, and the model never learns
    to stop. An error: the run does not train what the dataset built.

    ## Example
    ```python
    rows = [{"input_ids": ids, "labels": [-100] * n_prompt + reply}]   # careful labels
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)    # labels = input_ids
    Trainer(model=model, train_dataset=rows, data_collator=collator)
    ```

    ## Use instead
    ```python
    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)  # pads the labels
    ```
    """
    found = collated(ctx)
    if found is None:
        raise SkipCheck("needs the collator your trainer uses (--collator SPEC)")
    if not found.items:
        raise SkipCheck("needs dataset items to collate (--dataset, or --tokenized rows)")
    name = found.collator
    notes = _collated_notes(found)
    if not found.changed:
        kept = (f"{name} keeps the dataset's labels in {found.compared} of {found.items} items "
                f"collated" if found.compared else
                f"{name}: none of {found.items} items collated could be compared")
        return Outcome(summary=kept + notes)
    parts = [f"{found.prompt_trained} masked prompt tokens now trained",
             f"{found.reply_masked} supervised reply tokens now masked",
             f"{found.eot_masked} end-of-turn tokens now masked"]
    if found.padding_trained:
        parts.append(f"{found.padding_trained} padding tokens now trained")
    message = counted(found.changed, "item", f" ({', '.join(parts)})", of=found.compared,
                      before=f"{name} changes which tokens the dataset's labels supervise in ",
                      then="; ")
    rule_ = collator_discards_dataset_labels
    finding = rule_.finding(
        message, location=found.first_changed,
        evidence={"collator": name, "items": found.items, "compared": found.compared,
                  "count": found.changed.count, "lines": found.changed.lines,
                  "prompt_trained": found.prompt_trained,
                  "padding_trained": found.padding_trained,
                  "reply_masked": found.reply_masked, "eot_masked": found.eot_masked},
        fix=COLLATOR_FIX)
    return Outcome([finding], views=[found.view] if found.view else [],
                   summary=f"{name} changes the labels of {found.changed.count} of "
                           f"{found.compared} items collated{notes}")


def _collated_notes(found) -> str:
    """What else the comparison saw: shifted labels, items without labels of their own,
    items not found in the collated rows."""
    notes = []
    if found.shifted:
        notes.append(f"{plural(found.shifted.count, 'item')} moved one to the left (LD106)")
    if found.unlabelled:
        notes.append(f"{found.unlabelled} without labels of their own (TRL's masks, or none), "
                     f"not compared")
    if found.unpaired:
        notes.append(f"{found.unpaired.count} not found in the collated rows "
                     f"({found.first_unpaired})")
    return f"; {'; '.join(notes)}" if notes else ""


def _packed(ctx):
    """The batches' packing, and the Outcome to return when no row is packed (a skip without
    batches)."""
    if getattr(ctx, "batches_given", None) is None:
        raise SkipCheck("reads packed batches (a trainer's batches, batches=...)")
    found = packing(ctx)
    if found.rows:
        return found, None
    return found, Outcome(summary=f"no packed row in {len(ctx.batches_given)} batches")


@rule("LD119", "packed-label-crosses-samples", command="dataset", severity=Severity.WARNING,
      needs_tokenizer=False)
def packed_label_crosses_samples(ctx) -> Outcome:
    """In a packed row, a sample's first label is scored from the previous sample.

    ## What it does
    Splits the rows of the trainer's batches where their position ids restart (TRL's
    `packing=True`, `DataCollatorWithFlattening`) and reads the label at each boundary: for a
    model that shifts labels, the first label of every sample after the first (it is scored
    from the logits of the previous sample's last token); for a model that does not shift,
    the last label of every sample before the last. Counts the samples where it is supervised.

    ## Why is this bad?
    The model is trained to predict the start of one sample from the end of another, an
    unrelated conversation: one wrong target per sample, and a model that learns to go on
    past the end of its turn into a new conversation. Both packing collators mask that label
    (-100); a packing step written by hand that concatenates the labels as they are does not.
    A warning: one token per sample.

    ## Example
    ```python
    batch = {"input_ids": [a_ids + b_ids], "labels": [a_labels + b_labels],
             "position_ids": [list(range(len(a_ids))) + list(range(len(b_ids)))]}
    ```

    ## Use instead
    ```python
    collator = DataCollatorWithFlattening()   # labels[0] of every sample is -100
    ```
    """
    found, unpacked = _packed(ctx)
    if unpacked is not None:
        return unpacked
    if not found.crossing:
        return Outcome(summary=f"{found.samples} samples in {len(found.rows)} packed rows; "
                               f"no {found.scored_at} label is scored across a boundary")
    side = ("have their first label supervised, scored from the logits of the previous "
            "sample's last token" if found.scored_at == "first" else
            "have their last label supervised, which the model (it does not shift) scores as "
            "the next sample's first token")
    more = found.crossing.count - len(found.crossing_at)
    where = ", ".join(found.crossing_at) + (f" and {more} more" if more > 0 else "")
    finding = packed_label_crosses_samples.finding(
        f"{found.crossing.count} of {plural(found.samples, 'packed sample')} {side}, so the "
        f"model learns to predict one sample's start from another's end: {where}",
        location=found.crossing_at[0],
        evidence={"count": found.crossing.count, "samples": found.samples,
                  "locations": found.crossing_at, "label": found.scored_at},
        fix="mask the first label of every packed sample (-100), as DataCollatorWithFlattening "
            "and TRL's padding-free collator do")
    return Outcome([finding], summary=f"{found.samples} samples in {len(found.rows)} packed "
                                      f"rows")


@rule("LD120", "packed-samples-attend-across", command="dataset", severity=Severity.ERROR,
      needs_tokenizer=False)
def packed_samples_attend_across(ctx) -> Outcome:
    """The samples of a packed row attend to each other: measured, with the model.

    ## What it does
    Runs the first packed rows of the trainer's batches through the model as the trainer hands
    them (every key but the labels), then each of their samples alone, and compares the
    logits. The first sample has nothing before it to see, so its difference is the numeric
    floor; a later sample whose logits differ far beyond it attended to the samples before
    it. Reports the samples, the differences, what the model was given and its attention
    implementation. Needs the model (the callback's, or `--model`).

    ## Why is this bad?
    Packing is only equivalent to training each sample alone when attention stops at the
    sample boundaries. Whether it does depends on what the batch carries (restarting
    position ids, flash-attention offsets, an attention mask), the attention implementation
    and the library version: an all-ones attention mask, or a forward that builds a cache,
    makes transformers treat the packed row as one sequence. Every sample is then trained on
    the context of unrelated conversations before it; the loss looks normal. An error.

    ## Example
    ```python
    batch = DataCollatorWithFlattening()(rows)
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])  # one long sequence
    ```

    ## Use instead
    ```python
    batch = DataCollatorWithFlattening()(rows)   # position ids only, no attention mask;
    # the Trainer calls the model with use_cache=False (TrainingArguments' default)
    ```
    """
    found, unpacked = _packed(ctx)
    if unpacked is not None:
        return unpacked
    if not getattr(ctx, "has_model", False):
        raise SkipCheck("needs the model to measure whether attention keeps packed samples "
                        "apart (--model, or the callback's model)")
    from ..model.packed_attention import measure
    try:
        measured = ctx.memo("packed_attention", lambda: measure(
            ctx.loaded_model(), ctx.batches_given, found.rows))
    except (TypeError, ValueError) as exc:
        raise SkipCheck(f"the model cannot run the packed batch alone and split: {exc}") \
            from None
    return _attention_outcome(measured)


def _attention_outcome(measured) -> Outcome:
    keys = ", ".join(measured.keys)
    given = (f"given {keys} ({measured.attention} attention, {measured.dtype}, config "
             f"use_cache={measured.use_cache})")
    leaking = measured.leaking
    apart = measured.apart
    if not leaking:
        return Outcome(summary=f"{len(apart)} packed samples after the first match their "
                               f"logits run alone (within {measured.tolerance:.2g}); {given}")
    worst = max(leaking, key=lambda s: s.diff)
    more = f" and {len(leaking) - 4} more" if len(leaking) > 4 else ""
    message = (f"{len(leaking)} of {len(apart)} packed samples after the first see the samples "
               f"before them: their logits in the packed row differ from the sample run alone "
               f"by up to {worst.diff:.3g} (the first sample, with none before it: "
               f"{measured.floor:.2g}); {given}; "
               f"{', '.join(s.location for s in leaking[:4])}{more}")
    if "attention_mask" in measured.keys:
        fix = ("drop the attention_mask from packed batches (with it the row is one sequence): "
               "position ids alone, or cu_seq_lens_q/k with flash attention")
    elif measured.use_cache:
        fix = ("call the model with use_cache=False (TrainingArguments' default): with a cache "
               "transformers does not split a packed row by its position ids")
    else:
        fix = ("give the attention the boundaries it reads (flash_attention_2 with "
               "cu_seq_lens_q/k), or do not pack")
    return Outcome([packed_samples_attend_across.finding(
        message, location=worst.location, evidence=measured.to_evidence(), fix=fix)],
        summary=f"{len(leaking)} of {len(apart)} packed samples attend across the boundary")


RULES = [collator_discards_dataset_labels, packed_label_crosses_samples,
         packed_samples_attend_across]
