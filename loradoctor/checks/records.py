"""LD100: lines that are not JSON, and records that are not readable conversations.

One broken line or bad record among many is a finding (with its `file:line`) and the rest of
the file is still checked; a file in which no record is a conversation is an input error
(exit 2). The count is `masking.record_scan`'s: the first `MAX_KEPT` bad lines kept with their
numbers, all of them counted.
"""

from __future__ import annotations

from ..findings import Severity
from ..masking.record_scan import scan_records
from ..rules import Outcome, rule

MAX_LISTED = 10   # bad records reported one by one; the rest are counted in one finding


@rule("LD100", "unreadable-record", command="dataset", severity=Severity.ERROR,
      needs_tokenizer=False)
def unreadable_record(ctx) -> Outcome:
    """A line of the data file is not JSON, or its record is not a conversation a template renders.

    ## What it does
    Reads every line of the data file, and every record in any of the four accepted shapes
    (`messages`, MiniMind `conversations`, ShareGPT `from`/`value`, `prompt`/`completion`), and
    reports each line that is not valid JSON (or not UTF-8 text) and each record that has no
    recognizable conversation, a role a chat template cannot take, or content that is not a
    string, with its `file:line`. The rest of the file is still checked; the first 1,000 bad
    lines are kept with their numbers and all of them are counted.

    ## Why is this bad?
    An error, because the run it leads to is wasted or wrong: the usual `json.loads(line)` loop
    raises on the first broken line (hours into the run when the file is streamed), and code
    that catches the error or reads records loosely silently skips or mangles them (a `None`
    content becomes the text "None"). Either way the data you think you train on is not the
    data you train on.

    ## Example
    ```json
    {"conversations": [{"role": "narrator", "content": "Once upon a time"}]}
    {"messages": [{"role": "user", "content": ["a", "list"]}]}
    {"messages": [{"role": "user", "content": "cut off here
    ```

    ## Use instead
    ```json
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    ```
    """
    if not ctx.has_conversations:
        return _token_rows(ctx)
    scan = scan_records(ctx)
    bad = scan["bad"]
    findings = [
        unreadable_record.finding(rec.problem, location=rec.location,
                                  evidence={"line": rec.line, "unparsed": rec.unparsed},
                                  fix=_fix(rec))
        for rec in bad[:MAX_LISTED]
    ]
    n_rest = scan["n_bad"] - min(len(bad), MAX_LISTED)
    if n_rest > 0:
        rest = bad[MAX_LISTED:]
        kept = f" (lines of the first {len(rest)} in evidence)" if len(rest) < n_rest else ""
        findings.append(unreadable_record.finding(
            f"{n_rest} more lines are not valid JSON or not readable conversations{kept}",
            location=rest[0].location, evidence={"count": n_rest,
                                                 "lines": [r.line for r in rest]},
            fix="repair or drop these lines; the rest of the file was checked"))
    total = scan["good"] + scan["n_bad"]
    summary = f"{scan['good']} of {total} records are readable conversations"
    if scan["n_unparsed"]:
        summary += f"; {scan['n_unparsed']} lines are not valid JSON"
    return Outcome(findings, summary=summary)


def _token_rows(ctx) -> Outcome:
    """Token rows (--tokenized, batches, a dataset instance): each must hold ids and labels."""
    from ..masking.analysis import analysis
    c = analysis(ctx).comparison
    fix = "give every row input_ids and labels (lists of token ids of the same length)"
    findings = [unreadable_record.finding(problem, location=location, evidence={"line": line},
                                          fix=fix)
                for line, location, problem in c.row_problems[:MAX_LISTED]]
    n_rest = c.bad_rows.count - len(findings)
    if n_rest > 0:
        findings.append(unreadable_record.finding(
            f"{n_rest} more rows do not hold input_ids and labels",
            location=c.row_problems[len(findings)][1] if len(c.row_problems) > len(findings)
            else None, evidence={"lines": c.bad_rows.lines}, fix=fix))
    total = c.samples + c.bad_rows.count
    return Outcome(findings, summary=f"{c.samples} of {total} rows hold input_ids and labels")


def _fix(rec) -> str:
    if rec.unparsed:
        return "repair the line (one complete JSON object per line) or drop it"
    return "make the record a list of {role, content} turns with string content and roles " \
           "system/user/assistant"


RULES = [unreadable_record]
