"""Loading what the user points us at: model and tokenizer directories, SPECs, chat records.

Everything here either returns what was asked for or raises `InputError` with one line that
names the place (directory, `file:line`, SPEC). Nothing is fetched from a hub and nothing of
the user's is written.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError

DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
          "half": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# --- directories -------------------------------------------------------------------------


def local_dir(path: str | Path, what: str) -> Path:
    """A local directory, or an InputError that says why not (missing, a file, a hub id)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise InputError(f"{what} {path}: is a file, expected a directory in Hugging Face layout")
    if _HUB_ID.match(str(path)) and not str(path).startswith((".", "/")):
        raise InputError(
            f"{what} {path}: no such local directory, and loradoctor never downloads from a hub; "
            f"download it first and pass the local folder"
        )
    raise InputError(f"{what} {path}: no such directory")


def load_tokenizer(path: str | Path):
    """A tokenizer from a local directory (offline; no hub)."""
    from transformers import AutoTokenizer

    d = local_dir(path, "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any loader failure is the user's input
        raise InputError(f"tokenizer {path}: cannot be loaded: {_one_line(exc)}") from exc


def has_tokenizer(path: str | Path) -> bool:
    d = Path(path)
    return any((d / f).exists() for f in ("tokenizer.json", "tokenizer_config.json",
                                           "tokenizer.model", "vocab.json"))


def torch_dtype(name: str):
    import torch

    try:
        return getattr(torch, DTYPES[name.lower()])
    except KeyError:
        raise InputError(f"dtype {name!r}: expected one of fp32, fp16, bf16") from None


def resolve_device(name: str = "auto") -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name}: CUDA is not available on this machine")
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"device {name!r}: expected auto, cpu, cuda or cuda:N")
    return name


def load_model(path: str | Path, dtype: str = "fp32", device: str = "cpu"):
    """A causal LM from a local directory, in `dtype` on `device`, in eval mode."""
    from transformers import AutoModelForCausalLM

    d = local_dir(path, "model")
    if not (d / "config.json").exists():
        raise InputError(f"model {path}: no config.json, not a Hugging Face model directory")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch_dtype(dtype),
                                                     local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"model {path}: cannot be loaded: {_one_line(exc)}"
                         f"{_own_class_hint(d)}") from exc
    return model.to(device).eval()


def _own_class_hint(d: Path) -> str:
    """For a `model_type` transformers does not know: how to pass the user's own class."""
    try:
        from transformers import CONFIG_MAPPING
        model_type = json.loads((d / "config.json").read_text(encoding="utf-8")).get("model_type")
    except Exception:  # noqa: BLE001 - no hint is better than a second error
        return ""
    if not model_type or model_type in CONFIG_MAPPING:
        return ""
    return (f"; model_type {model_type!r} is your own architecture: pass its class, e.g. "
            f"--model path/to/model.py:YourForCausalLM --model-arg path={d}")


# --- user code from a SPEC ---------------------------------------------------------------


def load_spec(spec: str) -> Any:
    """The object named by `path/to/file.py:NAME` or `package.module:NAME`."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name or not name.isidentifier():
        raise InputError(f"SPEC {spec!r}: expected path/to/file.py:NAME or package.module:NAME")
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _import_file(Path(target), spec)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            if exc.name and target.startswith(exc.name):
                raise InputError(f"SPEC {spec}: no module named {target!r}") from exc
            raise InputError(f"SPEC {spec}: importing {target} failed: {_where(exc)}") from exc
        except Exception as exc:  # noqa: BLE001 - the user's module raised while importing
            raise InputError(f"SPEC {spec}: importing {target} failed: {_where(exc)}") from exc
    if not hasattr(module, name):
        raise InputError(f"SPEC {spec}: {target} has no attribute {name!r}")
    return getattr(module, name)


def _import_file(path: Path, spec: str):
    if not path.is_file():
        raise InputError(f"SPEC {spec}: no such file {path}")
    mod_name = f"_loradoctor_user_{abs(hash(str(path.resolve())))}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(module_spec)
    # The user's file may import its neighbours (`from model_lora import LoRA`), as it does
    # when run from its own folder.
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    sys.modules[mod_name] = module
    # Importing must not write __pycache__ into the user's folder.
    saved_bytecode_flag, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001
        sys.modules.pop(mod_name, None)
        raise InputError(f"SPEC {spec}: importing {path} failed: {_where(exc)}") from exc
    finally:
        sys.dont_write_bytecode = saved_bytecode_flag
        if sys.path and sys.path[0] == folder:
            sys.path.pop(0)
    return module


def parse_kwargs(pairs: list[str] | None, flag: str = "--apply-arg") -> dict[str, Any]:
    """`KEY=VALUE` pairs; VALUE is a Python literal where it parses as one, else a string."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise InputError(f"{flag} {pair!r}: expected KEY=VALUE")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out[key.strip()] = value
    return out


# --- chat records ------------------------------------------------------------------------

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
    # `part-0001.parquet:17` while `line` counts rows across them all (`datasource.py`).
    where: str | None = None

    @property
    def location(self) -> str:
        return self.where or f"{self.source}:{self.line}"


def read_records(path: str | Path) -> Iterator[Record]:
    """Stream the records of a JSON Lines file (or a `.json` list), line numbers kept.

    A line that is not valid JSON (or not UTF-8 text) comes back as a record with `problem`
    set, like a record that is JSON but not a conversation: real files of millions of lines
    have a few broken ones, and the rest must still be checked (LD100 reports each). Raises
    InputError for a file that cannot be opened, and, once read to the end, for a file in
    which no line is valid JSON.
    """
    from . import datasource
    if datasource.is_table(path):  # parquet / arrow files, a `save_to_disk` folder, a glob
        yield from datasource.open_source(path).records()
        return
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


# --- helpers -----------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _where(exc: BaseException) -> str:
    """The exception in one line, with the user's file and line where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = str(Path(__file__).resolve().parent)
    user = [f for f in frames if "importlib" not in f.filename and not f.filename.startswith(ours)]
    # The user's own file rather than the library frame the error surfaced in (torch's linear).
    own = [f for f in user if "site-packages" not in f.filename and "dist-packages" not in f.filename]
    user = own or user
    where = f" (at {user[-1].filename}:{user[-1].lineno})" if user else ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" (at {exc.filename}:{exc.lineno})"
    return _one_line(exc) + where
