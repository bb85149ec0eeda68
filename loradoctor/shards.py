"""`check-dataset --shard I/N` partial reports, and `merge`: N of them joined into one run's.

A shard run checks the I-th of N contiguous shares of the records (`inputs.sources.shard_range`)
and, under `--json`, writes its own report plus, under `partial`, the measurements the rules
read: the masking pass (`Analysis`, with the token views the share logged, `masking.shares`),
LD100's record scan, the loss convention of the model given. `merge` reads them back, merges
them in shard order by the same rules `--workers` uses, and runs the rules again on the merged
measurements through the engine. The report is the one a single run over the whole input
gives: counts, line lists with the file's line numbers, token views, exit code.

A partial is plain JSON. Dataclasses are written with their class's name and read back only
for loradoctor's own classes (nothing else is imported or called); dicts are written as
key/value pairs (their keys may be numbers), and tuples, sets and Counters are tagged.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .context import DatasetContext
from .errors import InputError
from .findings import jsonable

FORMAT = 1  # the partial's layout; `merge` refuses others


# --- stand-ins for what a merge has no access to -----------------------------------------------


@dataclass
class TokenizerFacts:
    """The special tokens the rules read from the user's tokenizer (LD102, LD108)."""

    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    unk_token: str | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    @classmethod
    def of(cls, tok) -> "TokenizerFacts":
        return cls(**{f.name: getattr(tok, f.name, None) for f in dataclasses.fields(cls)})


@dataclass
class UserFacts:
    """The user's dataset code as the rules read it once it ran: its names and tokenizer."""

    spec: str
    name: str
    kind: str
    tokenizer: TokenizerFacts = field(default_factory=TokenizerFacts)

    def __bool__(self) -> bool:
        return True


# --- plain JSON in and out ----------------------------------------------------------------------


def _class_name(cls) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def encode(value: Any) -> Any:
    """`value` as plain JSON (see the module's docstring)."""
    if isinstance(value, Enum):
        return {"__enum__": _class_name(type(value)), "value": value.value}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__dc__": _class_name(type(value)),
                "fields": {f.name: encode(getattr(value, f.name))
                           for f in dataclasses.fields(value)}}
    if isinstance(value, Counter):
        return {"__counter__": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, dict):
        return {"__dict__": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v) for v in value]}
    if isinstance(value, (set, frozenset)):
        tag = "__frozenset__" if isinstance(value, frozenset) else "__set__"
        return {tag: [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, Path):
        return {"__path__": str(value)}
    raise TypeError(f"cannot write a {type(value).__name__} into a partial report")


def _own_class(name: str):
    module, _, qual = name.partition(":")
    if module != "loradoctor" and not module.startswith("loradoctor."):
        raise InputError(f"partial report: {name} is not a loradoctor class")
    try:
        obj = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        raise InputError(f"partial report: no class {name} in this version of loradoctor; "
                         f"merge with the version that wrote it") from None
    return obj


def decode(value: Any) -> Any:
    """The value `encode` wrote."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__dc__" in value:
        cls = _own_class(value["__dc__"])
        if not dataclasses.is_dataclass(cls):
            raise InputError(f"partial report: {value['__dc__']} is not a record class")
        known = {f.name: f for f in dataclasses.fields(cls)}
        given = {k: decode(v) for k, v in value["fields"].items()}
        unknown = set(given) - set(known)
        if unknown:
            raise InputError(f"partial report: {cls.__name__} has no field "
                             f"{sorted(unknown)[0]!r} in this version of loradoctor")
        obj = cls(**{k: v for k, v in given.items() if known[k].init})
        for k, v in given.items():
            if not known[k].init:
                object.__setattr__(obj, k, v)
        return obj
    if "__enum__" in value:
        return _own_class(value["__enum__"])(value["value"])
    if "__counter__" in value:
        return Counter({decode(k): decode(v) for k, v in value["__counter__"]})
    if "__dict__" in value:
        return {_key(decode(k)): decode(v) for k, v in value["__dict__"]}
    if "__tuple__" in value:
        return tuple(decode(v) for v in value["__tuple__"])
    if "__set__" in value:
        return {decode(v) for v in value["__set__"]}
    if "__frozenset__" in value:
        return frozenset(decode(v) for v in value["__frozenset__"])
    if "__float__" in value:
        return float(value["__float__"])
    if "__path__" in value:
        return Path(value["__path__"])
    raise InputError(f"partial report: a value of unknown kind ({', '.join(value)[:60]})")


def _key(k):
    return tuple(k) if isinstance(k, list) else k


# --- a shard's partial report -------------------------------------------------------------------


def partial(ctx, rules) -> dict:
    """What `merge` needs of this shard run, as plain JSON (`Report.partial`)."""
    from .version import __version__
    from .masking.analysis import Analysis

    memo = ctx.__dict__.get("_memo", {})
    kept, errors = {}, {}
    for key in ("masking.analysis", "masking.share", "record_scan", "convention"):
        if key in memo:
            ok, value = memo[key]
            if ok:
                kept[key] = value
            else:
                errors[key] = f"{type(value).__name__}: {value}"
    measurements: dict[str, Any] = {}
    a: Analysis | None = kept.get("masking.analysis")
    if a is not None:
        user = None
        if a.user is not None:
            user = UserFacts(a.user.spec, a.user.name, a.user.kind,
                             TokenizerFacts.of(a.user.tokenizer))
        comparison = a.comparison
        if comparison is not None:
            comparison = dataclasses.replace(comparison, views={})  # replayed from the log
        measurements["analysis"] = dataclasses.replace(a, user=user, comparison=comparison)
    share = kept.get("masking.share")
    if share is not None:
        from .masking.shares import view_decoder
        decode_view = view_decoder(ctx.tokenizer)
        measurements["views"] = share.log.trim().dump(decode_view)  # the shard is complete
        measurements["variant_lines"] = share.variant_lines
    if "record_scan" in kept:
        measurements["record_scan"] = kept["record_scan"]
    if "convention" in kept:
        measurements["convention"] = kept["convention"]
    i, n = ctx.shard
    start, stop = ctx.span
    return {
        "format": FORMAT, "version": __version__, "shard": [i, n], "records": [start, stop],
        "inputs": _inputs(ctx, rules), "errors": errors,
        "summary": jsonable(ctx.report_summary()),
        "tokenizer": encode(TokenizerFacts.of(ctx.tokenizer)),
        "measurements": encode(measurements),
    }


def _inputs(ctx, rules) -> dict:
    """What must be the same in every shard of one run (checked by `merge`)."""
    user = ctx.user_dataset
    return {
        "data": ctx.source, "layout": ctx.layout,
        "tokenizer": ctx.tokenizer_path or type(ctx.tokenizer).__name__,
        "dataset": ctx.dataset_spec or (getattr(user, "__name__", type(user).__name__)
                                        if user is not None else None),
        "max_length": ctx.max_length, "tokenized": ctx.tokenized, "show": ctx.show,
        "conversations": ctx.has_conversations,
        "model": ctx.model_name if ctx.has_model else None,
        "note": getattr(ctx, "convention_note", None),  # how labels were read, for the title
        "rules": [r.code for r in rules],
    }


# --- merge ------------------------------------------------------------------------------------


def read_partials(paths: list[str | Path]) -> list[dict]:
    """The partial reports in the files, checked to be one run's shards (else exit 2)."""
    out = []
    for path in paths:
        try:
            report = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); merge takes the "
                             f"output of check-dataset --shard I/N --json") from None
        part = report.get("partial") if isinstance(report, dict) else None
        if not isinstance(part, dict):
            raise InputError(f"{path}: not a partial report (no 'partial' key); write one with "
                             f"check-dataset --shard I/N --json")
        out.append({**part, "_path": str(path)})
    return out


def merge_partials(parts: list[dict]):
    """The whole run's Report from its shards' partial reports, and a title for it."""
    from . import engine, registry
    from .masking.analysis import summary as masking_summary
    from .masking.record_scan import merge_scans, records_summary

    parts = _checked(parts)
    first = parts[0]
    inputs = first["inputs"]
    m = [decode(p["measurements"]) for p in parts]
    ctx = MergedContext(max_length=inputs["max_length"], show=inputs["show"],
                        tokenized=inputs["tokenized"])
    ctx.inputs = inputs
    ctx.tokenizer_given = decode(first["tokenizer"])
    ctx.convention_given = m[0].get("convention")
    recomputed: dict[str, Any] = {}
    scans = [x["record_scan"] for x in m if "record_scan" in x]
    if scans:
        scan = merge_scans(scans)
        _check_readable(scan)
        ctx.memo("record_scan", lambda: scan)
        recomputed.update(records_summary(scan))
    analysis = _merged_analysis(m)
    if analysis is not None:
        if analysis.user is not None:
            ctx.dataset_given = analysis.user
        ctx.memo("masking.analysis", lambda: analysis)
        recomputed.update(masking_summary(analysis))
        c = analysis.comparison
        if c is not None and c.bad_rows and not c.samples:  # as one run over the rows says
            line, location, problem = c.row_problems[0]
            raise InputError(f"{location}: {problem} (and no row holds input_ids and labels)")
    # The summary in the shards' order: measured figures from the merged measurements; the
    # rest (the loss convention, ...) is about the inputs, the same in every shard.
    for key, value in first.get("summary", {}).items():
        if key in recomputed:
            ctx.summary[key] = recomputed[key]
        elif all(p.get("summary", {}).get(key) == value for p in parts):
            ctx.summary[key] = value
    for key, value in recomputed.items():
        ctx.summary.setdefault(key, value)
    chosen = set(inputs["rules"])
    rules = [r for r in registry.rules_for("dataset") if r.code in chosen]
    report = engine.run("check-dataset", rules, ctx)
    what = inputs["data"] + (" (token rows)" if inputs["tokenized"] else "")
    note = f" · {inputs['note']}" if inputs.get("note") else ""
    title = (f"check-dataset · {what} · tokenizer {inputs['tokenizer']}{note} · merged from "
             f"{len(parts)} shards")
    return report, title


def _checked(parts: list[dict]) -> list[dict]:
    """Shards of one run, each once, all of them: sorted by shard number."""
    from .version import __version__

    if not parts:
        raise InputError("merge: give the partial reports of every shard (PART.json ...)")
    for p in parts:
        if p.get("format") != FORMAT:
            raise InputError(f"{p['_path']}: a partial report of format {p.get('format')}, "
                             f"this loradoctor reads format {FORMAT}")
        if p.get("version") != __version__:
            raise InputError(f"{p['_path']}: written by loradoctor {p.get('version')}, this is "
                             f"{__version__}; merge with the version that wrote the shards")
        if p.get("errors"):
            key, error = next(iter(p["errors"].items()))
            i, n = p["shard"]
            raise InputError(f"{p['_path']}: shard {i}/{n} did not complete ({key}: {error}); "
                             f"run that shard again")
    first = parts[0]
    n = first["shard"][1]
    for p in parts[1:]:
        if p["shard"][1] != n:
            raise InputError(f"{p['_path']}: shard {p['shard'][0]}/{p['shard'][1]}, but "
                             f"{first['_path']} is one of {n} shards")
        for key, value in first["inputs"].items():
            if p["inputs"].get(key) != value:
                raise InputError(f"{p['_path']}: {key} is {p['inputs'].get(key)!r}, but "
                                 f"{value!r} in {first['_path']}: not shards of one run")
    by_index: dict[int, dict] = {}
    for p in parts:
        i = p["shard"][0]
        if i in by_index:
            raise InputError(f"{p['_path']}: shard {i}/{n} is also {by_index[i]['_path']}")
        by_index[i] = p
    missing = [i for i in range(1, n + 1) if i not in by_index]
    if missing:
        shown = ", ".join(f"{i}/{n}" for i in missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise InputError(f"merge: shard {shown} missing ({len(by_index)} of {n} given); the "
                         f"merged report must cover every record")
    return [by_index[i] for i in range(1, n + 1)]


def _merged_analysis(m: list[dict]):
    from .masking.shares import Share, ViewLog

    analyses = [x.get("analysis") for x in m]
    if any(a is None for a in analyses):
        return None
    head = analyses[0]
    total = None
    for a, x in zip(analyses, m):
        log = ViewLog.load(x["views"]) if "views" in x else None
        share = Share(a.comparison, a.stats, log, list(x.get("variant_lines", [])))
        if total is None:
            total = share
        else:
            total.merge(share)
    total.finish()
    return dataclasses.replace(head, stats=total.stats, comparison=total.comparison)


def _check_readable(scan: dict) -> None:
    """As one run would: a file with no valid JSON line, or no readable record, is exit 2."""
    from .masking.record_scan import check_readable

    bad = scan["bad"]
    if scan["good"] == 0 and bad and scan["n_unparsed"] == scan["n_bad"]:
        raise InputError(f"{bad[0].location}: {bad[0].problem} (and no line of the file is "
                         f"valid JSON)")
    check_readable(scan)


class MergedContext(DatasetContext):
    """A check-dataset context rebuilt from merged measurements. It reads no data and loads no
    tokenizer or code: a rule that asks for more than the partials carry crashes visibly."""

    inputs: dict = {}
    convention_given: Any = None

    def _absent(self, what: str):
        raise RuntimeError(f"merge: {what} is not in the partial reports")

    def records(self):
        self._absent("the records")

    def rows(self):
        self._absent("the token rows")

    def user_data(self):
        self._absent("the dataset code")

    def count(self):
        return None

    @property
    def source(self) -> str:
        return self.inputs["data"]

    @property
    def layout(self) -> list:
        return [tuple(x) for x in self.inputs["layout"]]

    @property
    def has_conversations(self) -> bool:
        return self.inputs["conversations"]

    @property
    def has_model(self) -> bool:
        return self.inputs["model"] is not None

    @property
    def model_name(self) -> str:
        return self.inputs["model"] or ""

    @property
    def convention(self):
        from .model.convention import HF
        return self.convention_given or HF
