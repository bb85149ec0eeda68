"""The records of a data file counted, readable or not, in one streaming pass (LD100 reads it).

The first `MAX_KEPT` unreadable records are kept with their line numbers and all of them are
counted, so a file of millions of lines costs bounded memory however broken it is. A file in
which no record is a readable conversation is an input error (exit 2). A sharded run's scans
merge into the one a single run over the whole file gives (`merge_scans`).
"""

from __future__ import annotations

from ..errors import InputError

MAX_KEPT = 1000   # bad records kept with their line numbers; every one is counted


def scan_records(ctx) -> dict:
    """Count good and bad records in one streaming pass (memoised on the context)."""
    def compute():
        good, n_bad, n_unparsed, bad, shapes = 0, 0, 0, [], {}
        for rec in ctx.records():
            if rec.messages is None:
                n_bad += 1
                n_unparsed += rec.unparsed
                if len(bad) < MAX_KEPT:
                    bad.append(rec)
            else:
                good += 1
                shapes[rec.shape] = shapes.get(rec.shape, 0) + 1
        scan = {"good": good, "bad": bad, "n_bad": n_bad, "n_unparsed": n_unparsed,
                "shapes": shapes}
        if getattr(ctx, "shard", None) is None:  # a shard's records are judged by `merge`
            check_readable(scan)
        ctx.summary.update(records_summary(scan))
        return scan
    return ctx.memo("record_scan", compute)


def check_readable(scan: dict) -> None:
    """A file in which no record is a readable conversation is an input error (exit 2)."""
    bad = scan["bad"]
    if scan["good"] == 0 and bad:
        raise InputError(f"{bad[0].location}: {bad[0].problem} (and no record in the file "
                         f"is a readable conversation)")


def records_summary(scan: dict) -> dict:
    return {"records": scan["good"] + scan["n_bad"], "records_readable": scan["good"],
            "records_unparseable": scan["n_unparsed"], "record_shapes": scan["shapes"]}


def merge_scans(scans: list[dict]) -> dict:
    """The shards' scans, in shard order, as one scan of the whole file."""
    out = {"good": 0, "bad": [], "n_bad": 0, "n_unparsed": 0, "shapes": {}}
    for s in scans:
        out["good"] += s["good"]
        out["n_bad"] += s["n_bad"]
        out["n_unparsed"] += s["n_unparsed"]
        out["bad"].extend(s["bad"][:MAX_KEPT - len(out["bad"])])
        for shape, k in s["shapes"].items():
            out["shapes"][shape] = out["shapes"].get(shape, 0) + k
    return out
