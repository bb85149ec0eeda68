"""LD115, and `--fuzz` failures reported under the masking rule each one breaks.

`check-dataset --fuzz N` feeds N generated conversations to the user's dataset code after the
file's own records (`masking.fuzz_search`). A conversation the code labels wrongly is a finding of
the rule it breaks (LD101-LD111): `with_fuzz()` gives each masking rule its share of the fuzz
failures, with the shrunk conversation as a ready-to-paste JSON Lines record and a token view.
A conversation that makes the code raise is LD115's, whose summary line also says what the fuzz
pass did.
"""

from __future__ import annotations

import dataclasses
import functools

from ..findings import Severity
from ..masking.fuzz_search import RAISES, Failure, FuzzResult, fuzzing
from ..masking.wording import plural, tally
from ..rules import Outcome, Rule, SkipCheck, rule

RECORD_IN_MESSAGE = 1000  # a longer shrunk record is cut in the message (whole in evidence)

FIXES = {
    "LD101": "find assistant spans from the chat template (its rendered text and offsets, or its "
             "{% generation %} mask), not from a marker searched for in the ids",
    "LD103": "set labels to -100 outside the assistant replies: locate them from the template, "
             "not by searching the text or ids for header text that content may also hold",
    "LD104": "supervise every assistant turn's body through its end-of-turn token, located from "
             "the template (offsets or {% generation %}), not by searching for markers",
    "LD105": "end each supervised span at the turn's own end-of-turn token (from the template), "
             "not at the first end-of-turn text the reply itself may hold",
    "LD106": "return labels aligned with input_ids (labels[t] is input_ids[t] or -100)",
    "LD107": "raise the max length, truncate the prompt from the left, or drop conversations "
             "that do not fit",
    "LD108": "mask padding by position (attention_mask == 0), not by token id",
    "LD109": "tokenize the rendered text with add_special_tokens=False",
    "LD110": "render with tokenizer.apply_chat_template(messages, tokenize=False) and tokenize "
             "the whole text in one call with add_special_tokens=False",
    "LD111": "locate replies by character offsets (return_offsets_mapping) or the template's "
             "generation mask, not by searching input_ids for a marker's ids",
    RAISES: "handle every conversation the template renders (empty, whitespace-only or long "
            "replies, special-token text), or filter records before they reach training",
}


def _describe(code: str, f: Failure, eot: str | None) -> tuple[str, Severity | None]:
    """What the shrunk conversation shows for one rule, with real counts from its comparison."""
    c = f.comparison
    if code == RAISES or c is None:
        return f"your code fails on it: {f.error}", None
    if code == "LD101":
        return "every label is -100 (no token is supervised)", None
    if code == "LD103":
        kinds = tally(c.prompt_categories)
        n = sum(c.prompt_categories.values())
        return (f"{n} prompt token{'s are' if n != 1 else ' is'} supervised ({kinds} "
                f"token{'s' if n != 1 else ''})"), None
    if code == "LD104":
        return (f"{c.missing_tokens} of {c.assistant_tokens} assistant tokens are labelled "
                f"-100"), None
    if code == "LD105":
        missing = c.eot_missing - c.eot_missing_as_pad
        return f"{missing} of {c.eot_total} end-of-turn tokens ({eot!r}) are labelled -100", None
    if code == "LD106":
        return "each label holds the next token's id (labels shifted by hand)", None
    if code == "LD107":
        limit = c.user_max_length
        at = f" at {limit} tokens" if limit else ""
        if c.truncated_all:
            return f"truncation{at} cuts every assistant token ({c.cut_tokens})", Severity.ERROR
        if c.truncated_part:
            return (f"truncation{at} cuts {c.cut_tokens} assistant "
                    f"token{'s' if c.cut_tokens != 1 else ''}, the end-of-turn token among "
                    f"them"), Severity.WARNING
        return f"the sample ends inside an assistant turn{at}", Severity.WARNING
    if code == "LD108":
        return "the end-of-turn token has the pad id and is labelled -100", None
    if code == "LD109":
        return "the sample starts with BOS twice", None
    if code == "LD110":
        first = (c.first_differ or "").split(": ", 1)[-1]
        return f"its input_ids differ from the template's rendering ({first})", None
    if code == "LD111":
        if c.marker_miss:
            names = ", ".join(c.marker_miss)
            return (f"the marker {names} is not found in its ids: in context its edge merges "
                    f"with the reply's first characters"), None
        return ("a reply that starts with text merging with the assistant header's last token "
                "is left unsupervised"), None
    return "it breaks this rule", None


def fuzz_findings(rule_: Rule, result: FuzzResult, eot: str | None) -> tuple[list, list]:
    """This rule's findings and token views from the fuzz pass."""
    findings, views = [], []
    for f in result.failures_for(rule_.code):
        what, severity = _describe(rule_.code, f, eot)
        turns = plural(f.turns, "turn")
        others = [c for c in f.codes if c != rule_.code]
        also = f" (it also breaks {', '.join(others)})" if others else ""
        record = f.jsonl if len(f.jsonl) <= RECORD_IN_MESSAGE else (
            f"({len(f.jsonl):,} characters; the whole record is the evidence `jsonl` of "
            f"--json) {f.jsonl[:RECORD_IN_MESSAGE // 2]}...")
        findings.append(rule_.finding(
            f"--fuzz found a conversation your code gets wrong: {what}{also}. Shrunk to {turns}, "
            f"{f.tokens} tokens, after {f.found_after} of {result.tried} generated "
            f"conversations (seed {result.seed}); as a record for your data: {record}",
            severity=severity, location=f"--fuzz seed {result.seed}",
            evidence={"record": f.record, "jsonl": f.jsonl, "codes": f.codes,
                      "turns": f.turns, "tokens": f.tokens, "found_after": f.found_after,
                      "generated": result.tried, "seed": result.seed, "error": f.error},
            fix=FIXES.get(rule_.code)))
        # One token view per conversation: under its first rule (LD111's is LD104's view).
        key = rule_.code if rule_.code in f.views else \
            next(iter(f.views), None) if rule_.code == f.codes[0] else None
        if key is not None:
            views.extend(f.views[key][:1])
    return findings, views


def with_fuzz(rules: list[Rule]) -> list[Rule]:
    """The masking rules, each also reporting the `--fuzz` failures that break it."""
    return [dataclasses.replace(r, check=_merged(r)) for r in rules]


def _merged(rule_: Rule):
    @functools.wraps(rule_.check)
    def check(ctx) -> Outcome:
        outcome = rule_.check(ctx)
        if outcome is None:
            outcome = Outcome()
        elif isinstance(outcome, list):
            outcome = Outcome(findings=outcome)
        result = fuzzing(ctx)
        if result is None or not result.failures_for(rule_.code):
            return outcome
        from ..masking.analysis import analysis
        findings, views = fuzz_findings(rule_, result, analysis(ctx).facts.end_of_turn)
        k = len(findings)
        summary = f"{outcome.summary}; " if outcome.summary else ""
        return dataclasses.replace(
            outcome, findings=[*outcome.findings, *findings], views=[*outcome.views, *views],
            summary=f"{summary}--fuzz: {k} generated conversation{'s' if k != 1 else ''} "
                    f"break{'s' if k == 1 else ''} it")
    return check


@rule("LD115", "dataset-code-fails-on-input", command="dataset", severity=Severity.ERROR)
def dataset_code_fails_on_input(ctx) -> Outcome:
    """Your dataset code raises on (or drops) a conversation the chat template renders.

    ## What it does
    With `--fuzz N`, after the data file's own records, feeds N generated conversations to your
    dataset class (through a one-record temporary file in your data's record shape) or
    labelling function: empty and whitespace-only turns, replies that start with a newline,
    CJK, emoji and right-to-left text, the tokenizer's special tokens and template markup as
    text, very long turns, `<think>` blocks, system turns and the role orders the template
    accepts. Each sample is compared with the chat template's truth like a record of the file.
    A conversation that makes your code raise (or that your class returns no item for) is
    shrunk to the smallest one that still does and reported here, as a JSON Lines record ready
    to paste into your data; one your code labels wrongly is reported under the rule it breaks
    (LD101-LD111). This line's summary says how many conversations were fed.

    ## Why is this bad?
    Today's data may hold no such record; the next file will. An exception on an empty reply
    stops a training run when the loader reaches it, hours in, and a class that silently drops
    records trains on less than the data holds.

    ## Example
    ```python
    at = text.index(reply, cursor)  # "" is found at once, before the header ...
    start = text.rindex("<|im_start|>assistant\\n", 0, at)  # ... so this raises ValueError
    ```

    ## Use instead
    ```python
    # let the template say where the replies are: {% generation %} blocks with
    # return_assistant_tokens_mask=True, or the rendered text's character offsets
    ```
    """
    result = fuzzing(ctx)
    if result is None:
        raise SkipCheck("needs --fuzz N (generated conversations through your dataset code)")
    if result.not_run:
        raise SkipCheck(f"--fuzz {result.not_run}")
    rule_ = dataset_code_fails_on_input
    findings, views = fuzz_findings(rule_, result, None)
    broke = len(result.failures)
    judged = result.tried - result.skipped
    parts = [f"{judged} of {result.tried} generated conversations judged (seed {result.seed})"]
    if broke:
        codes = sorted({c for f in result.failures for c in f.codes})
        parts.append(f"{broke} shrunk conversation{'s' if broke != 1 else ''} break "
                     f"{', '.join(codes)}")
    else:
        parts.append("none breaks a rule")
    if result.known:
        parts.append(f"not searched again: {', '.join(result.known)}, which the file's records "
                     f"break")
    return Outcome(findings, views=views, summary="; ".join(parts))


RULES = [dataset_code_fails_on_input]
