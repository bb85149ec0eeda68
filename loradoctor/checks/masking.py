"""LD101-LD114: label masking checked against the truth the chat template gives.

Every rule reads one shared pass (`masking.analysis.analysis`, computed once per run): the
oracle's scan of the data file and, with `--dataset`, the user's samples compared with the
oracle position by position. Rules that only make sense with the user's code skip without it;
the others measure the data and tokenizer alone.
"""

from __future__ import annotations

from ..findings import Severity
from ..masking.analysis import Analysis, analysis
from ..masking.markers import none_attributes, none_marker
from ..masking.template import SPECIAL_VARS
from ..masking.wording import (agree, counted, line_list, plural, rewrite_kind, tally,
                                think_block_left_out, turns_missed)
from ..rules import Outcome, SkipCheck, rule

TEMPLATE_FIX = ("find assistant spans from the chat template (its rendered text and offsets, or "
                "its {% generation %} mask), not from a marker built by hand")


@rule("LD101", "no-supervised-tokens", command="dataset", severity=Severity.ERROR,
      needs_tokenizer=False)
def no_supervised_tokens(ctx) -> Outcome:
    """A sample has no supervised token: every label is -100.

    ## What it does
    With `--dataset`, asks your dataset class or labelling function for every sample and counts
    the samples whose labels are all -100. Without it, counts the conversations that have no
    assistant turn at all, so that nothing could be supervised. Reports how many and which
    lines, with a token view of the first few.

    ## Why is this bad?
    The mean cross-entropy over zero tokens is 0/0: the loss is NaN from the first step (and
    the optimizer turns every weight it touches into NaN), or the trainer silently drops the
    sample. The classic cause is a marker search that never matches, for example a marker built
    from `tokenizer.bos_token`, which is None for Qwen tokenizers.

    ## Example
    ```python
    marker = tokenizer(f"{tokenizer.bos_token}assistant\\n").input_ids  # "Noneassistant\\n"
    labels = [-100] * len(input_ids)  # the marker is never found: nothing is unmasked
    ```

    ## Use instead
    ```python
    marker = tokenizer("<|im_start|>assistant\\n", add_special_tokens=False).input_ids
    ```
    """
    a = analysis(ctx)
    c, s = a.comparison, a.stats
    if c is not None:  # the user's samples
        bad, total, noun, fix = c.no_supervised, c.samples, "sample", TEMPLATE_FIX
        said = (" have no supervised token (every label is -100), so their loss is NaN or they "
                "are silently dropped")
        summary = f"{c.samples - bad.count} of {c.samples} samples supervise at least one token"
    else:  # the conversations alone: those with nothing to supervise
        bad, total, noun = s.no_assistant, s.rendered, "conversation"
        said = (" have no assistant turn, so nothing in them can be supervised (NaN loss or a "
                "dropped sample)")
        fix = "end every conversation with an assistant reply, or drop these records"
        summary = (f"{s.assistant_tokens} assistant tokens in {s.turns} turns of {s.rendered} "
                   f"conversations")
    findings = [a.finding(no_supervised_tokens, bad, counted(bad, noun, said, of=total), fix=fix,
                          **{f"{noun}s": total})] if bad else []
    return Outcome(findings, views=a.views_for("LD101"), summary=summary)


@rule("LD102", "marker-from-missing-special-token", command="dataset", severity=Severity.ERROR)
def marker_from_missing_special_token(ctx) -> Outcome:
    """An assistant marker is built from a special token the tokenizer does not have (None).

    ## What it does
    Reads the token lists your dataset instance keeps (such as `self.bos_id`) and decodes
    them, and reads your code's source for f-strings, `.format()`, `%` or `str()` that put a
    tokenizer special-token attribute (`bos_token`, `eos_token`, ...) into text. It flags a
    marker whose text contains `None` from an attribute that is None for this tokenizer, and
    source that formats such an attribute when samples lose their labels. It names the
    attribute and gives the marker text the chat template really writes.

    ## Why is this bad?
    Python formats None as the text `None`: `f"{tokenizer.bos_token}assistant\\n"` becomes
    `"Noneassistant\\n"` with Qwen2/2.5/3 tokenizers (they have no BOS token), the marker never
    occurs in `input_ids`, every label stays -100 and the loss is NaN. The same code works with
    MiniMind's or SmolLM2's tokenizer (whose bos_token is `<|im_start|>`), so it passes every
    test until the tokenizer changes.

    ## Example
    ```python
    self.bos_id = tokenizer(f"{tokenizer.bos_token}assistant\\n",
                            add_special_tokens=False).input_ids
    ```

    ## Use instead
    ```python
    self.bos_id = tokenizer("<|im_start|>assistant\\n", add_special_tokens=False).input_ids
    ```
    """
    a = analysis(ctx)
    c = a.needs_comparison()
    if a.user is None:
        raise SkipCheck("needs your dataset code or dataset object (token rows carry no markers)")
    tok = a.user.tokenizer
    missing = none_attributes(tok, SPECIAL_VARS)
    symptom = c.no_supervised.count + c.unsupervised_assistant.count
    found = none_marker(a.markers, a.source_hits, missing, symptom, a.facts.assistant_header,
                        a.facts.end_of_turn)
    rule_ = marker_from_missing_special_token
    findings = []
    if found is not None:
        attr, marker, hit, correct = found.attribute, found.marker, found.hit, found.template_marker
        what = (f"the marker {marker.attribute} decodes to {marker.text!r}" if marker
                else f"{hit.snippet} formats tokenizer.{attr}")
        where = f" (built at {hit.location}: {hit.snippet})" if hit and marker else ""
        findings.append(rule_.finding(
            f"{what}{where}: tokenizer.{attr} is None for this tokenizer, so the text 'None' "
            f"is searched for and never found; {symptom} of {c.samples} samples lose their "
            f"assistant labels. The chat template's marker is {correct!r}",
            location=hit.location if hit else None,
            evidence={**found.to_evidence(), "samples_affected": symptom, "samples": c.samples,
                      "lines": (c.no_supervised.lines + c.unsupervised_assistant.lines)[:1000]},
            fix=f"build the marker from the template's text: tokenizer({correct!r}, "
                f"add_special_tokens=False).input_ids"))
    checked = len(a.markers)
    none_attrs = ", ".join(missing) or "none"
    return Outcome(findings, summary=f"{checked} marker(s) in {a.user.name} decoded; special "
                                     f"tokens that are None here: {none_attrs}")


@rule("LD103", "prompt-tokens-supervised", command="dataset", severity=Severity.WARNING)
def prompt_tokens_supervised(ctx) -> Outcome:
    """System, user or role-header tokens carry labels.

    ## What it does
    Compares your labels with the template's truth position by position and counts supervised
    tokens that belong to system or user turns, to template text (role headers such as
    `<|im_start|>assistant\\n`, the preamble) or to padding. A supervised separator right after
    the end-of-turn token (the `\\n` after `<|im_end|>`, as MiniMind's code does) is harmless
    and only reported as an info. The empty think block a template writes into a reply on its
    own (Qwen3's last turn, every turn of MiniMind's template) is not prompt: supervising it is
    a legitimate choice (LD104 says when it is left out).

    ## Why is this bad?
    Supervised fine-tuning is meant to teach the replies. Training on the prompt spends the
    gradient on text the model will never be asked to write, teaches it to imitate users and
    role headers, and changes what the loss value means.
    A warning, not an error: the replies are still trained, and training on the whole
    conversation is a choice some recipes make on purpose (TRL without `assistant_only_loss`).

    ## Example
    ```python
    labels = list(input_ids)  # everything supervised
    ```

    ## Use instead
    ```python
    labels = [tok if in_assistant_turn[i] else -100 for i, tok in enumerate(input_ids)]
    ```
    """
    a = analysis(ctx)
    c = a.needs_comparison()
    rule_ = prompt_tokens_supervised
    findings = []
    cats = {k: v for k, v in c.prompt_categories.items() if k != "padding"}
    if c.prompt_supervised:
        findings.append(a.finding(rule_, c.prompt_supervised, counted(
            c.prompt_supervised, "sample", f" supervise prompt tokens ({tally(cats)} tokens): "
            f"the model is trained to write the prompt too", of=c.compared, then="; "),
            fix="set labels to -100 outside the assistant replies (keep the end-of-turn token)",
            samples=c.compared, tokens=cats))
    if c.padding_supervised:
        findings.append(a.finding(rule_, c.padding_supervised, counted(
            c.padding_supervised, "sample", f" supervise {c.prompt_categories['padding']} "
            f"padding tokens"), fix="set labels of padding to -100"))
    if c.separator_supervised:  # harmless: an info, its lines in the evidence only
        sep = c.separator_supervised
        findings.append(a.finding(rule_, sep, f"{plural(sep.count, 'sample')} also supervise "
                                  f"the separator {a.facts.separator!r} after the end-of-turn "
                                  f"token; harmless", severity=Severity.INFO))
    return Outcome(findings, views=a.views_for("LD103"),
                   summary=f"{c.compared - c.prompt_supervised.count} of {c.compared} samples "
                           f"supervise no prompt token")


@rule("LD104", "assistant-tokens-unsupervised", command="dataset", severity=Severity.WARNING)
def assistant_tokens_unsupervised(ctx) -> Outcome:
    """Assistant tokens are left unsupervised (whole turns, or a tail).

    ## What it does
    Counts assistant body tokens (what the template renders inside an assistant turn) that
    your labels leave at -100, in samples that do supervise something (samples with nothing
    supervised are LD101's). Tells whole missed turns from partly missed ones and tails. The
    empty `<think>\\n\\n</think>\\n\\n` a template writes into a reply on its own is not counted
    when it is left out (at inference the generation prompt or the model writes it, so both
    choices are right); the summary says it was left out.

    ## Why is this bad?
    The model is silently trained on part of each reply: only the last turn of multi-turn
    conversations, or replies cut before the end. It learns less than the data holds, and a
    reply whose tail is never supervised teaches the model to stop early or ramble. A warning:
    what is supervised still trains; a sample with nothing supervised is LD101's error.

    ## Example
    ```python
    start = len(input_ids) - len(last_reply_ids)  # only the final turn is supervised
    ```

    ## Use instead
    ```python
    for turn in assistant_turns:  # every assistant turn, body and end-of-turn token
        labels[turn.start:turn.end] = input_ids[turn.start:turn.end]
    ```
    """
    a = analysis(ctx)
    c = a.needs_comparison()
    rule_ = assistant_tokens_unsupervised
    findings = []
    bad = c.unsupervised_assistant
    if bad:
        findings.append(a.finding(rule_, bad, counted(
            bad, "sample", f" leave assistant tokens unsupervised: {c.missing_tokens} of "
            f"{c.assistant_tokens} assistant tokens are labelled -100 "
            f"({turns_missed(c.missing_turns, c.partial_turns, c.tail_samples)})",
            of=c.compared, then="; "),
            fix="supervise every assistant turn's body up to and including its end-of-turn "
                "token; " + TEMPLATE_FIX,
            samples=c.compared, tokens=c.missing_tokens, assistant_tokens=c.assistant_tokens,
            whole_turns=c.missing_turns, partial_turns=c.partial_turns))
    # Only the compared samples count here: no_supervised also holds samples whose ids differ.
    with_labels = c.compared_supervising
    summary = (f"{c.assistant_tokens - c.missing_tokens} of {c.assistant_tokens} assistant "
               f"tokens supervised in the {with_labels} samples that supervise anything")
    if c.inserted_unsupervised:  # a choice, not a miss: said, not counted
        summary += think_block_left_out(c.inserted_unsupervised.count, a.facts.inserted)
    return Outcome(findings, views=a.views_for("LD104"), summary=summary)


@rule("LD105", "end-of-turn-unsupervised", command="dataset", severity=Severity.ERROR)
def end_of_turn_unsupervised(ctx) -> Outcome:
    """The end-of-turn token that closes assistant replies is not supervised.

    ## What it does
    Derives the end-of-turn token from the chat template (the first special token it writes
    after an assistant reply: `<|im_end|>` for ChatML and Qwen, `<|eot_id|>` for Llama-3) and,
    with `--dataset`, counts end-of-turn positions your labels leave at -100. Without it,
    checks that the template closes every assistant turn with such a token.

    ## Why is this bad?
    The end-of-turn token is how the model learns to stop. A model fine-tuned without it keeps
    generating past its answer (inventing the next user turn) until max_new_tokens: an error
    when your labels leave it out. Without `--dataset` only the template is judged, and a
    template that writes no end-of-turn token (or leaves a turn unclosed) is a warning: a stop
    string or generation config can still end generation.

    ## Example
    ```python
    end = input_ids.index(im_end_id, start)
    labels[start:end] = input_ids[start:end]  # stops just before <|im_end|>
    ```

    ## Use instead
    ```python
    labels[start:end + 1] = input_ids[start:end + 1]  # include <|im_end|>
    ```
    """
    a = analysis(ctx)
    c, f = a.comparison, a.facts
    eot = f.end_of_turn
    rule_ = end_of_turn_unsupervised
    findings = []
    if c is not None:
        bad = c.eot_unsupervised
        if bad:
            findings.append(a.finding(rule_, bad, counted(
                bad, "sample", ": the model never learns to stop",
                before=f"{c.eot_missing - c.eot_missing_as_pad} of {c.eot_total} end-of-turn "
                       f"tokens ({eot!r}) are labelled -100 in ", then="; "),
                fix=f"include {eot!r} at the end of each supervised assistant span",
                end_of_turn=eot, end_of_turn_id=f.end_of_turn_id, missing=c.eot_missing,
                total=c.eot_total))
        return Outcome(findings, views=a.views_for("LD105"),
                       summary=f"{c.eot_total - c.eot_missing} of {c.eot_total} end-of-turn "
                               f"tokens ({eot!r}) supervised in the samples that supervise "
                               f"anything")
    s = a.stats
    if eot is None and f.assistant_header is not None:  # else LD112 says it cannot render
        findings.append(rule_.finding(
            "the chat template writes no end-of-turn token after an assistant reply, so no "
            "label can teach the model to stop", severity=Severity.WARNING,
            evidence=f.to_evidence(),
            fix="use a template that closes assistant turns with the model's end-of-turn token"))
    elif s.eot_missing:
        findings.append(a.finding(rule_, s.eot_missing, counted(
            s.eot_missing, "conversation", f" an assistant turn is not closed by {eot!r}",
            before="in "), severity=Severity.WARNING))
    return Outcome(findings, summary=f"assistant turns end with {eot!r} (id {f.end_of_turn_id}) "
                                     f"in {s.turns - s.eot_missing.count} of {s.turns} turns")


@rule("LD106", "labels-shifted-by-hand", command="dataset", severity=Severity.ERROR,
      needs_tokenizer=False)
def labels_shifted_by_hand(ctx) -> Outcome:
    """Labels are shifted by one by hand although the model shifts them internally.

    ## What it does
    Looks at every supervised position of your labels: when most hold the *next* input id
    (`labels[t] == input_ids[t + 1]`) rather than the same one, or `labels` is
    `input_ids[1:]`, the labels were shifted by hand. With `--model`, the model's loss is
    measured first: for a model that does not shift (nanoGPT's `forward(idx, targets)`) a
    hand shift is right, and LD116 checks the opposite mistake.

    ## Why is this bad?
    transformers' causal LMs shift `labels` inside `forward()` (logits at t are scored against
    labels at t + 1). Shifted once more, the model is trained to predict the token *after*
    the next one: the loss goes down, but the model learns the wrong task.

    ## Example
    ```python
    labels = input_ids[1:] + [-100]
    ```

    ## Use instead
    ```python
    labels = list(input_ids)  # same positions; the model shifts
    ```
    """
    a = analysis(ctx)
    c = a.needs_comparison()
    bad = c.shifted
    conv = getattr(ctx, "convention", None)
    if conv is not None and conv.has_loss and not conv.shifts:
        return Outcome(summary=f"{bad.count} of {c.samples} samples shift labels by hand, which "
                               f"{ctx.model_name} needs: it does not shift (see LD116)")
    findings = []
    if bad:
        findings.append(a.finding(labels_shifted_by_hand, bad, counted(
            bad, "sample", " hold the next token's id as each label (labels[t] == "
            "input_ids[t+1]): a transformers model shifts again and learns to predict the token "
            "after next", of=c.samples, then="; "),
            fix="return labels aligned with input_ids (labels[t] is input_ids[t] or -100)",
            samples=c.samples))
    return Outcome(findings, views=a.views_for("LD106"),
                   summary=f"labels aligned with input_ids in {c.samples - bad.count} of "
                           f"{c.samples} samples")


@rule("LD107", "assistant-tokens-truncated", command="dataset", severity=Severity.ERROR)
def assistant_tokens_truncated(ctx) -> Outcome:
    """Truncation at the max length removes all or part of the assistant tokens.

    ## What it does
    With `--dataset`, finds samples your code truncated (their ids are a prefix of the
    template's) and counts the assistant tokens cut away. Without it, with `--max-length N`,
    counts the conversations whose assistant tokens lie beyond the first N tokens (right
    truncation, as `input_ids[:max_length]` does). Without either, reports the lengths.

    ## Why is this bad?
    A long system prompt or user turn pushes the reply past the cut: a sample with every
    assistant token cut has nothing left to supervise (NaN loss or a dropped sample), and one
    cut partway loses the reply's end and its end-of-turn token, so the model learns to stop
    mid-sentence or never. Every assistant token cut is an error (a step over such a batch is
    NaN, or the sample is silently gone); a reply cut partway is a warning, since most of it
    still trains.

    ## Example
    ```python
    input_ids = tokenizer(text).input_ids[:512]  # long prompts leave no reply
    ```

    ## Use instead
    ```python
    # raise max_length, truncate the prompt from the left, or drop samples that do not fit
    ```
    """
    a = analysis(ctx)
    c, s = a.comparison, a.stats
    rule_ = assistant_tokens_truncated
    findings = []
    if c is not None:  # cut by the user's code (its max length), or at --max-length
        limit = c.user_max_length or ctx.max_length
        at = f" at {limit} tokens" if limit else ""
        all_, part, cut, n = c.truncated_all, c.truncated_part, c.cut_tokens, c.samples
    elif ctx.max_length is None:
        return Outcome(summary=f"no --max-length given; longest conversation {s.longest} "
                               f"tokens ({a.location(s.longest_line)}), 95% within "
                               f"{s.percentile(0.95)}")
    else:
        limit = ctx.max_length
        at = f" at --max-length {limit}"
        all_, part, cut, n = s.cut_all, s.cut_part, s.cut_tokens, s.rendered
    fix = ("raise the max length, truncate the prompt from the left, or drop conversations "
           "that do not fit")
    if all_:
        findings.append(a.finding(rule_, all_, counted(
            all_, "sample", f" {agree(all_.count, 'loses', 'lose')} every assistant token to "
            f"truncation{at}, leaving nothing to supervise"), fix=fix, max_length=limit))
    if part:
        findings.append(a.finding(rule_, part, counted(
            part, "sample", f" {agree(part.count, 'loses', 'lose')} part of their assistant "
            f"tokens to truncation{at} ({cut} tokens in all, with their end-of-turn token)"),
            severity=Severity.WARNING, fix=fix, max_length=limit, tokens_cut=cut))
    if c is not None and c.cut_in_turn:
        findings.append(a.finding(rule_, c.cut_in_turn, counted(
            c.cut_in_turn, "sample", f" {agree(c.cut_in_turn.count, 'ends', 'end')} inside an "
            f"assistant turn (no end-of-turn token after its last reply): cut by truncation, the "
            f"model never sees where that reply ends", then="; "), severity=Severity.WARNING,
            fix=fix, max_length=limit))
    return Outcome(findings, views=a.views_for("LD107"),
                   summary=f"{n - all_.count - part.count} of {n} samples keep every assistant "
                           f"token{at}")


@rule("LD108", "pad-equals-eos-masks-eos", command="dataset", severity=Severity.ERROR)
def pad_equals_eos_masks_eos(ctx) -> Outcome:
    """pad_token is the end-of-turn token and padding is masked by id, so every real EOS is too.

    ## What it does
    With `--dataset`, flags samples whose end-of-turn tokens are labelled -100 while the pad
    token has the same id (the signature of `labels[input_ids == pad_id] = -100`). Without
    it, notes (info) when the tokenizer's pad token is its end-of-turn or EOS token.

    ## Why is this bad?
    Setting `pad_token = eos_token` is the usual fix for a tokenizer without a pad token, and
    masking padding by id is the usual collator. Together they mask every real end-of-turn
    token: the model never learns to stop.

    ## Example
    ```python
    tokenizer.pad_token = tokenizer.eos_token
    labels[input_ids == tokenizer.pad_token_id] = -100
    ```

    ## Use instead
    ```python
    labels[attention_mask == 0] = -100  # mask padding by position, not by id
    ```
    """
    a = analysis(ctx)
    c, f = a.comparison, a.facts
    rule_ = pad_equals_eos_masks_eos
    findings = []
    if c is not None:
        tok = a.user.tokenizer if a.user is not None else ctx.tokenizer
        pad = getattr(tok, "pad_token", None)
        bad = c.eot_as_pad
        if bad:
            findings.append(a.finding(rule_, bad, counted(
                bad, "sample", ": padding masked by id masks every real end-of-turn too, so the "
                "model never learns to stop", then="; ",
                before=f"pad_token is {pad!r} (id {tok.pad_token_id}), the end-of-turn token, "
                       f"and the end-of-turn token is labelled -100 in "),
                fix="mask padding by position (attention_mask == 0), not by token id, or use a "
                    "pad token distinct from the end-of-turn token",
                pad_token=pad, pad_token_id=tok.pad_token_id))
        same = pad is not None and pad in (f.end_of_turn, getattr(tok, "eos_token", None))
        return Outcome(findings, views=a.views_for("LD108"),
                       summary=(f"pad_token {pad!r} is the end-of-turn token, but end-of-turn "
                                f"tokens stay supervised" if same and not bad
                                else f"pad_token {pad!r}"))
    same = f.pad_token is not None and f.pad_token in (f.end_of_turn, f.eos_token)
    if same:
        findings.append(rule_.finding(
            f"pad_token is {f.pad_token!r}, the same token that ends assistant turns: a collator "
            f"that masks padding by id also masks every real end-of-turn",
            severity=Severity.INFO, evidence={"pad_token": f.pad_token, "pad_token_id": f.pad_id},
            fix="mask padding by position (attention_mask == 0), not by token id"))
    return Outcome(findings, summary=f"pad_token {f.pad_token!r}, eos_token {f.eos_token!r}")


@rule("LD109", "double-bos", command="dataset", severity=Severity.WARNING)
def double_bos(ctx) -> Outcome:
    """A sample starts with two BOS tokens: the template writes one and tokenization adds another.

    ## What it does
    With `--dataset`, flags samples whose ids start with BOS twice where the template's start
    with it once. Without it, notes (info) when the template writes the BOS token and the
    tokenizer also adds one by default (`tokenizer(text)` with `add_special_tokens=True`).

    ## Why is this bad?
    The model never saw two BOS tokens in pretraining or at inference; every training sample
    starts out of distribution. Llama-3 and DeepSeek templates write `{{ bos_token }}` while
    their tokenizers add BOS too. A warning: the model learns around the extra token and the
    run still trains, at some cost in quality.

    ## Example
    ```python
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    input_ids = tokenizer(text).input_ids  # BOS from the template + BOS from the tokenizer
    ```

    ## Use instead
    ```python
    input_ids = tokenizer(text, add_special_tokens=False).input_ids
    ```
    """
    a = analysis(ctx)
    c, f = a.comparison, a.facts
    findings = []
    if c is not None:
        bad = c.double_bos
        if bad:
            findings.append(a.finding(double_bos, bad, counted(
                bad, "sample", f" start with {f.bos_token!r} twice: the template writes it and "
                f"tokenization adds another", of=c.samples, then="; "),
                fix="tokenize the rendered text with add_special_tokens=False",
                bos_token=f.bos_token))
        return Outcome(findings, summary=f"{c.samples - bad.count} of {c.samples} samples start "
                                         f"with at most one BOS")
    if f.emits_bos and f.adds_bos:
        findings.append(double_bos.finding(
            f"the template writes {f.bos_token!r} and tokenizer(text) adds another unless "
            f"add_special_tokens=False", severity=Severity.INFO,
            evidence={"bos_token": f.bos_token, "emits_bos": True, "adds_bos": True},
            fix="tokenize rendered conversations with add_special_tokens=False"))
    return Outcome(findings, summary=f"template writes BOS: {f.emits_bos}; tokenizer adds BOS: "
                                     f"{f.adds_bos}")


@rule("LD110", "input-ids-differ-from-template", command="dataset", severity=Severity.WARNING)
def input_ids_differ_from_template(ctx) -> Outcome:
    """The sample's input_ids differ from the chat template's rendering of its conversation.

    ## What it does
    Aligns each sample's ids with the template's (padding, truncation and a doubled BOS
    allowed for) and reports samples that still differ: a hand-written or different template,
    a missing system prompt or preamble, other special tokens, the same text tokenized in
    pieces. Also reports a dataset whose length does not match the number of records.

    ## Why is this bad?
    The model is fine-tuned on a format it will not see at inference (where the tokenizer's
    chat template is used), and masking code written for one format silently fails on another
    (ChatML markers on Llama-3 data leave every label at -100). A warning: your labels may
    still be right for the format you chose; when they are not, LD101 or LD104 is the finding
    that measures the loss of supervision.

    ## Example
    ```python
    text = f"<|im_start|>user\\n{q}<|im_end|>\\n<|im_start|>assistant\\n{a}<|im_end|>\\n"
    ```

    ## Use instead
    ```python
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    input_ids = tokenizer(text, add_special_tokens=False).input_ids
    ```
    """
    a = analysis(ctx)
    c = a.needs_comparison()
    if not ctx.has_conversations:
        return _rows_unexplained(a, c)
    rule_ = input_ids_differ_from_template
    findings = []
    bad = c.ids_differ
    if bad:
        findings.append(a.finding(rule_, bad, counted(
            bad, "sample", f" differ from the chat template's rendering; {c.first_differ}",
            of=c.samples, before="the input_ids of ", then="; "),
            fix="render with tokenizer.apply_chat_template(messages, tokenize=False) and "
                "tokenize with add_special_tokens=False", samples=c.samples, first=c.first_differ))
    if c.n_items is not None and c.n_items != c.n_records:
        findings.append(rule_.finding(
            f"{a.user.name} has {c.n_items} items for {c.n_records} records in the file; items "
            f"are matched to records in order, so comparisons after the first difference may "
            f"be off", evidence={"items": c.n_items, "records": c.n_records},
            fix="keep one item per record, in file order (filter records before writing the "
                "file)"))
    summary = f"{c.samples - bad.count} of {c.samples} samples match the template's ids"
    if c.by_tokens:
        summary += (f"; {c.by_tokens} that differ had their labels checked against their own "
                    f"tokens' turns")
    if c.unexplained:
        summary += f"; {c.unexplained.count} could not be split into turns"
    return Outcome(findings, summary=summary)


def _rows_unexplained(a: Analysis, c) -> Outcome:
    """LD110 for token rows: rows in which the template's structure finds no assistant turn."""
    bad = c.unexplained
    findings = []
    if bad:
        findings.append(a.finding(input_ids_differ_from_template, bad, counted(
            bad, "row", f" hold no turn the chat template's structure explains, so their labels "
            f"cannot be checked ({c.first_differ})", of=c.samples),
            fix="tokenize tokenizer.apply_chat_template(messages, tokenize=False) with the "
                "tokenizer the model trains with", samples=c.samples))
    return Outcome(findings, summary=f"{c.samples - bad.count} of {c.samples} rows split into "
                                     f"turns by the template's structure")


@rule("LD111", "marker-tokenizes-differently-in-context", command="dataset",
      severity=Severity.WARNING)
def marker_tokenizes_differently_in_context(ctx) -> Outcome:
    """A marker tokenizes differently inside the conversation than on its own.

    ## What it does
    For every marker token list your dataset instance holds, compares how often its text
    occurs in template-written text with how often its token ids occur in the template's
    tokens. For replies that start with text that merges with the header's last token (a
    reply starting with a newline after `assistant\\n`), reports the turns a token-id search
    for the header misses. Without `--dataset`, counts such turns (info).

    ## Why is this bad?
    BPE merges across the marker's edge: `assistant\\n` followed by `\\n` is one token `\\n\\n`,
    and gpt2 merges `:` of `### Assistant:` with the next word. The marker's ids then never
    occur, and the turns it should find stay unsupervised without an error. A warning: it
    names the cause; the supervision lost is measured, and is an error, in LD101 / LD104.

    ## Example
    ```python
    marker = tokenizer("<|im_start|>assistant\\n", add_special_tokens=False).input_ids
    # reply "\\nHere is the code" -> "assistant", "\\n\\n", "Here" -> no match
    ```

    ## Use instead
    ```python
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    # map the reply's character span (from the template) to tokens with the offsets
    ```
    """
    if not ctx.has_conversations and ctx.user_dataset is None:
        raise SkipCheck("token rows without dataset code: no marker to check")
    a = analysis(ctx)
    rule_ = marker_tokenizes_differently_in_context
    findings = []
    fix = ("locate replies by character offsets (return_offsets_mapping) or the template's "
           "generation mask, not by searching input_ids for a marker's ids")
    header, c = a.facts.assistant_header, a.comparison
    if c is not None:
        for attr, lines in c.marker_miss.items():
            marker = next(m for m in a.markers if m.attribute == attr)
            text_n, token_n = c.marker_counts[attr]
            findings.append(a.finding(rule_, lines, counted(
                lines, "sample", "", then="; ",
                before=f"marker {attr} ({marker.text!r}) occurs {text_n} times in the "
                       f"template's text but its ids only {token_n} times: in context its edge "
                       f"merges with the next text, in "),
                fix=fix, marker=marker.text, ids=marker.ids, text_occurrences=text_n,
                token_occurrences=token_n))
        if c.straddle_missing and not c.marker_miss:
            lines = c.straddle_missing
            findings.append(a.finding(rule_, lines, counted(
                lines, "sample", f" {agree(lines.count, 'leaves', 'leave')} an assistant turn "
                f"unsupervised whose reply starts with text that merges with the header's last "
                f"token ({header!r}), so the header's ids do not occur there", then="; "),
                fix=fix))
        return Outcome(findings, summary=f"{len([m for m in a.markers if m.ids])} marker(s) "
                                         f"checked in context")
    s = a.stats
    if s.straddle:
        findings.append(a.finding(rule_, s.straddle, counted(
            s.straddle, "conversation", f" start with text that merges with the header's last "
            f"token ({header!r}); code that searches input_ids for the header's ids misses them",
            before=f"{plural(s.straddle_turns, 'assistant turn')} in "),
            severity=Severity.INFO, fix=fix, turns=s.straddle_turns))
    return Outcome(findings, summary=f"{s.turns - s.straddle_turns} of {s.turns} assistant turns "
                                     f"start on a token boundary after the header")


@rule("LD112", "template-cannot-render-record", command="dataset", severity=Severity.ERROR)
def template_cannot_render_record(ctx) -> Outcome:
    """The chat template cannot render a conversation (or its replies cannot be found in it).

    ## What it does
    Renders every conversation with the tokenizer's chat template and reports those the
    template refuses (a template without a system role, one that requires strict user /
    assistant alternation), grouped by the template's message, with line numbers. Also reports
    (warning) conversations in which an assistant reply could not be located, so its labels
    could not be checked.

    ## Why is this bad?
    `apply_chat_template` raises on such a record: training crashes when it reaches it (hours
    in, for a large file), or the loader skips it without a word.

    ## Example
    ```json
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
    ```
    with a template that raises "System role not supported".

    ## Use instead
    ```json
    {"messages": [{"role": "user", "content": "Be brief.\\n\\nHi"}, ...]}
    ```
    """
    if not ctx.has_conversations:
        raise SkipCheck("token rows: there are no conversations to render")
    a = analysis(ctx)
    s, f = a.stats, a.facts
    rule_ = template_cannot_render_record
    findings = []
    for message, lines in s.render_errors.items():
        hint = "fix the records or the template"
        low = message.lower()
        if f.system_error and "system" in low:
            hint = "merge the system message into the first user turn (the template has none)"
        elif f.alternation_error and ("alternat" in low or "order" in low):
            hint = "merge consecutive turns of the same role (the template needs alternation)"
        findings.append(a.finding(rule_, lines, counted(
            lines, "conversation", f" cannot be rendered by the chat template ({message})",
            of=s.records), fix=hint, error=message))
    if s.unlocated:
        findings.append(a.finding(rule_, s.unlocated, counted(
            s.unlocated, "conversation", " an assistant reply could not be located in the "
            "rendered text, so its labels were not checked", before="in "),
            severity=Severity.WARNING))
    for problem in f.problems:
        findings.append(rule_.finding(f"chat template: {problem}", severity=Severity.WARNING,
                                      evidence=f.to_evidence()))
    methods = tally(s.methods)
    return Outcome(findings, summary=f"{s.rendered} of {s.records} conversations render; "
                                     f"replies located: {methods or 'none'}")


@rule("LD113", "special-token-missing-for-template", command="dataset",
      severity=Severity.WARNING)
def special_token_missing_for_template(ctx) -> Outcome:
    """A special token the chat template needs is missing or inconsistent in the tokenizer.

    ## What it does
    Checks that every special-token variable the template writes (`{{ bos_token }}`,
    `{{ eos_token }}`, ...) is set in the tokenizer, that `eos_token` is the token the template
    ends assistant turns with, and that there is a pad token. Reports what it measured.

    ## Why is this bad?
    A template variable that is None renders as nothing: every sample silently lacks the BOS
    the model was trained with. An `eos_token` that is not the end-of-turn token makes
    generation run past the reply unless the generation config says otherwise, and a missing
    pad token invites `pad_token = eos_token` (see LD108). Warnings: each can be made right
    downstream (a generation config, an explicit pad token); LD108 is the error when the pad
    token really masks every end of turn.

    ## Example
    ```python
    tokenizer.bos_token = None  # the Llama-3 template writes {{ bos_token }} first
    ```

    ## Use instead
    ```python
    tokenizer.bos_token = "<|begin_of_text|>"
    ```
    """
    a = analysis(ctx)
    f = a.facts
    rule_ = special_token_missing_for_template
    findings = []
    for var in f.missing_vars:
        findings.append(rule_.finding(
            f"the chat template writes {{{{ {var} }}}} but tokenizer.{var} is None, so it "
            f"renders as nothing in every conversation",
            evidence={"variable": var}, fix=f"set tokenizer.{var} to the model's token"))
    if f.end_of_turn and f.eos_token and f.eos_token != f.end_of_turn:
        findings.append(rule_.finding(
            f"tokenizer.eos_token is {f.eos_token!r} but the template ends assistant turns with "
            f"{f.end_of_turn!r}: generation stops at {f.eos_token!r} unless the generation "
            f"config also names {f.end_of_turn!r}", severity=Severity.INFO,
            evidence={"eos_token": f.eos_token, "end_of_turn": f.end_of_turn},
            fix=f"set generation_config.eos_token_id to include {f.end_of_turn!r}"))
    if f.pad_token is None:
        findings.append(rule_.finding(
            "the tokenizer has no pad token: batching needs one, and pad_token = eos_token "
            "makes padding masked by id mask every end-of-turn (LD108)", severity=Severity.INFO,
            fix="add a dedicated pad token, or mask padding by position"))
    return Outcome(findings, summary=f"bos {f.bos_token!r}, eos {f.eos_token!r}, pad "
                                     f"{f.pad_token!r}, end of turn {f.end_of_turn!r}")


@rule("LD114", "template-rewrites-history", command="dataset", severity=Severity.INFO)
def template_rewrites_history(ctx) -> Outcome:
    """The template does not render some assistant replies verbatim (it rewrites history).

    ## What it does
    Detects templates whose rendering of a turn depends on what follows (Qwen3 adds an empty
    `<think>` block to the last assistant turn and drops `<think>` blocks from earlier ones;
    Llama-3 trims whitespace) and counts the conversations whose replies are affected. Where
    the template has `{% generation %}` blocks, reports (warning) conversations where those
    blocks disagree with the replies found in the rendered text. Also counts conversations with
    a system or user message the template does not write at all (Mistral v3 writes the system
    message only when a user turn ends the conversation, so never in training data).

    ## Why is this bad?
    It is not a bug in itself: supervision follows the full conversation's rendering. But code
    that labels turns by rendering prefixes, or that expects the reply text verbatim, gets
    these conversations wrong, and reasoning you meant to train on is silently dropped.

    ## Example
    ```json
    {"messages": [{"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "<think>plan</think>Hello"},
                  {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Ciao"}]}
    ```

    ## Use instead
    ```python
    # train on the template's rendering of the whole conversation, or use a training template
    # that keeps reasoning (TRL's qwen3_training.jinja)
    ```
    """
    if not ctx.has_conversations:
        return _rows_variant(analysis(ctx))
    a = analysis(ctx)
    s, f = a.stats, a.facts
    rule_ = template_rewrites_history
    findings = []
    if s.rewritten:
        findings.append(a.finding(rule_, s.rewritten, counted(
            s.rewritten, "conversation", f" {agree(s.rewritten.count, 'has', 'have')} assistant "
            f"replies the template does not render verbatim (it {rewrite_kind(f)}); their labels "
            f"follow the rendered text"), drops_reasoning=f.drops_reasoning))
    if s.dropped:
        roles = "system" if f.system_error else "system or user"
        findings.append(a.finding(rule_, s.dropped, counted(
            s.dropped, "conversation", f" {agree(s.dropped.count, 'has', 'have')} a {roles} "
            f"message the template does not write at all, so training never sees it"),
            fix="merge the system message into the first user turn if the model should learn "
                "with it"))
    if s.generation_mismatch:
        findings.append(a.finding(rule_, s.generation_mismatch, counted(
            s.generation_mismatch, "conversation", f" the template's generation blocks disagree "
            f"with the replies found in the rendered text ({s.first_mismatch}); the generation "
            f"blocks were used", before="in "), severity=Severity.WARNING,
            first=s.first_mismatch))
    if f.rewrites_history:
        summary = f"the template rewrites earlier turns; {s.rewritten.count} conversations affected"
    else:
        summary = "the template renders every turn the same wherever it stands"
    return Outcome(findings, summary=summary)


def _rows_variant(a: Analysis) -> Outcome:
    """LD114 for token rows: which rendering of the template the rows follow."""
    c = a.comparison
    rows = c.variant_rows
    if not c.variant_checked:
        return Outcome(summary="no row was split into turns")
    if not rows:
        return Outcome(summary=f"{c.variant_checked} of {c.variant_checked} rows checked follow "
                               f"the tokenizer's own chat template")
    # "rows" whatever the count ("1 of 1 rows"), as this message has always read.
    finding = a.finding(
        template_rewrites_history, rows,
        f"{rows.count} of {c.variant_checked} rows follow a variant of the tokenizer's chat "
        f"template ({c.first_variant}); the variant is self-consistent, so labels were judged "
        f"against the rows' own turns: {line_list(rows)}",
        checked=c.variant_checked, first=c.first_variant)
    return Outcome([finding], summary=f"{c.variant_checked - rows.count} of "
                                      f"{c.variant_checked} rows follow the tokenizer's own "
                                      f"chat template, {rows.count} a variant of it")


RULES = [no_supervised_tokens, marker_from_missing_special_token, prompt_tokens_supervised,
         assistant_tokens_unsupervised, end_of_turn_unsupervised, labels_shifted_by_hand,
         assistant_tokens_truncated, pad_equals_eos_masks_eos, double_bos,
         input_ids_differ_from_template, marker_tokenizes_differently_in_context,
         template_cannot_render_record, special_token_missing_for_template,
         template_rewrites_history]
