"""Chat records: the four record shapes of a JSON Lines file (or a `.json` list) as messages.

A record holds one conversation as `{"messages": [...]}`, `{"conversations": [...]}` (role /
content, or ShareGPT's from / value) or `{"prompt", "completion"}`; `normalise_record` turns
each into `[{"role", "content"}, ...]` or says why it cannot. Tables (parquet, arrow) and live
datasets are read by `sources.py`, which hands their rows to `normalise_record` too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError

ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                "bot": "assistant", "model": "assistant", "system": "system", "tool": "tool"}


@dataclass
class Record:
    """One conversation from a data file, with the line it came from.

    `messages` is normalised to `[{"role", "content"}, ...]`; when the record cannot be read as
    a conversation (or the line is not even JSON: `unparsed`), `messages` is None and
    `problem` says why (the caller makes a finding).
    """

    source: str
    line: int
    messages: list[dict[str, str]] | None
    problem: str | None = None
    shape: str | None = None
    unparsed: bool = False  # the line itself is not JSON (or not UTF-8), not just the record
    # Where it is when that is not `source:line`: a row of one of several parquet files is
    # `part-0001.parquet:17` while `line` counts rows across them all (`sources.py`).
    where: str | None = None

    @property
    def location(self) -> str:
        return self.where or f"{self.source}:{self.line}"


def read_records(path: str | Path) -> Iterator[Record]:
    """Stream the records of a JSON Lines file (or a `.json` list), line numbers kept (tables
    and globs: `sources.records`).

    A line that is not valid JSON (or not UTF-8 text) comes back as a record with `problem`
    set, like a record that is JSON but not a conversation: real files of millions of lines
    have a few broken ones, and the rest must still be checked (LD100 reports each). Raises
    InputError for a file that cannot be opened, and, once read to the end, for a file in
    which no line is valid JSON.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"data {path}: no such file")
    if p.suffix == ".json":
        yield from _read_json_list(p)
        return
    try:
        fh = p.open("rb")
    except OSError as exc:
        raise InputError(f"data {path}: cannot be opened ({exc.strerror})") from None
    parsed, first_broken = 0, None
    with fh:
        for line_no, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            rec = parse_line(str(p), line_no, raw)
            if rec.unparsed:
                first_broken = first_broken or rec
            else:
                parsed += 1
            yield rec
    if not parsed:
        if first_broken is not None:
            raise InputError(f"{first_broken.location}: {first_broken.problem} (and no line of "
                             f"the file is valid JSON)")
        raise InputError(f"data {p}: the file holds no records")


def parse_line(source: str, line_no: int, raw: bytes) -> Record:
    """One line of a JSON Lines file as a record; a line that is not JSON says so (`unparsed`)."""
    try:
        # A byte-order mark on the first line is an editor's habit, not a broken line.
        line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
        obj = json.loads(line)
    except UnicodeDecodeError as exc:
        return Record(source, line_no, None, f"not UTF-8 text ({exc.reason} at byte "
                      f"{exc.start})", unparsed=True)
    except json.JSONDecodeError as exc:
        return Record(source, line_no, None, f"not valid JSON ({exc.msg}, column "
                      f"{exc.colno})", unparsed=True)
    return normalise_record(obj, source, line_no)


def _read_json_list(p: Path) -> Iterator[Record]:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise InputError(f"data {p}: a .json data file must hold a list of records")
    if not data:
        raise InputError(f"data {p}: the file holds no records")
    for i, obj in enumerate(data):
        # A .json list has no per-record line; the record's index (from 1) stands in for it.
        yield normalise_record(obj, str(p), i + 1)


def normalise_record(obj: Any, source: str, line: int) -> Record:
    """Turn any of the four record shapes into `[{"role", "content"}]`, or say why not."""
    def bad(problem: str) -> Record:
        return Record(source, line, None, problem)

    if not isinstance(obj, dict):
        return bad(f"a record must be a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        shape, turns = "messages", obj["messages"]
    elif "conversations" in obj:
        shape, turns = "conversations", obj["conversations"]
    elif "prompt" in obj and "completion" in obj:
        shape = "prompt-completion"
        turns = _prompt_completion(obj["prompt"], obj["completion"])
        if isinstance(turns, str):
            return bad(turns)
    else:
        keys = ", ".join(sorted(obj)[:6]) or "none"
        return bad("no conversation: expected messages, conversations or prompt/completion "
                   f"(keys: {keys})")
    if not isinstance(turns, list) or not turns:
        return bad(f"{shape!r} must be a non-empty list of turns")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return bad(f"turn {i} is a {type(turn).__name__}, expected an object")
        if "role" in turn and "content" in turn:
            role, content = turn["role"], turn["content"]
        elif "from" in turn and "value" in turn:
            role, content = turn["from"], turn["value"]
            shape = "sharegpt"
        else:
            return bad(f"turn {i} has no role/content (or from/value) fields")
        if not isinstance(role, str) or role.lower() not in ROLE_ALIASES:
            return bad(f"turn {i} has role {role!r}, which a chat template cannot take "
                       f"(expected system, user, assistant or tool)")
        if not isinstance(content, str):
            return bad(f"turn {i} ({role}) has {type(content).__name__} content, expected a string")
        messages.append({"role": ROLE_ALIASES[role.lower()], "content": content})
    return Record(source, line, messages, shape=shape)


def _prompt_completion(prompt: Any, completion: Any) -> list[dict] | str:
    if isinstance(prompt, str) and isinstance(completion, str):
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    if isinstance(prompt, list) and isinstance(completion, list):
        return prompt + completion  # TRL's conversational prompt/completion
    return "prompt and completion must both be strings or both be lists of turns"
