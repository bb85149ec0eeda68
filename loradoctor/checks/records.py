"""LD100: records that are not readable conversations.

One bad record among many is a finding (with its `file:line`) and the rest of the file is
still checked; a file in which no record is a conversation is an input error (exit 2).
"""

from __future__ import annotations

from ..errors import InputError
from ..findings import Severity
from ..rules import Outcome, rule

MAX_LISTED = 10  # bad records reported one by one; the rest are counted in one finding


def scan_records(ctx) -> dict:
    """Count good and bad records in one streaming pass (memoised on the context)."""
    def compute():
        good, bad, shapes = 0, [], {}
        for rec in ctx.records():
            if rec.messages is None:
                bad.append(rec)
            else:
                good += 1
                shapes[rec.shape] = shapes.get(rec.shape, 0) + 1
        if good == 0 and bad:
            raise InputError(f"{bad[0].location}: {bad[0].problem} (and no record in the file "
                             f"is a readable conversation)")
        ctx.summary.update({"records": good + len(bad), "records_readable": good,
                            "record_shapes": shapes})
        return {"good": good, "bad": bad, "shapes": shapes}
    return ctx.memo("record_scan", compute)


@rule("LD100", "unreadable-record", command="dataset", severity=Severity.WARNING)
def unreadable_record(ctx) -> Outcome:
    """A record in the data file is not a conversation the chat template can render.

    ## What it does
    Reads every record of the data file in any of the four accepted shapes (`messages`,
    MiniMind `conversations`, ShareGPT `from`/`value`, `prompt`/`completion`) and reports each
    record that has no recognizable conversation, a role a chat template cannot take, or
    content that is not a string, with its `file:line`.

    ## Why is this bad?
    Training code usually either crashes on such a record hours into a run, or silently
    skips or mangles it (a `None` content becomes the text "None"). Either way the data you
    think you train on is not the data you train on.

    ## Example
    ```json
    {"conversations": [{"role": "narrator", "content": "Once upon a time"}]}
    {"messages": [{"role": "user", "content": ["a", "list"]}]}
    ```

    ## Use instead
    ```json
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    ```
    """
    scan = scan_records(ctx)
    bad = scan["bad"]
    findings = [
        unreadable_record.finding(rec.problem, location=rec.location,
                                  evidence={"line": rec.line},
                                  fix="make the record a list of {role, content} turns with "
                                      "string content and roles system/user/assistant")
        for rec in bad[:MAX_LISTED]
    ]
    if len(bad) > MAX_LISTED:
        rest = bad[MAX_LISTED:]
        findings.append(unreadable_record.finding(
            f"{len(rest)} more records are not readable conversations",
            location=rest[0].location, evidence={"lines": [r.line for r in rest[:1000]]}))
    total = scan["good"] + len(bad)
    return Outcome(findings, summary=f"{scan['good']} of {total} records are readable conversations")


RULES = [unreadable_record]
