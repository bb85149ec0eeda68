"""The options of a run, declared once: the CLI, `[tool.loradoctor]` and Ray all read this table.

Each `Option` names one input of `loradoctor.api.prepare` (its `arg`), the commands that take
it, how its value is written (`kind`) and its help. From it:

- `add_arguments(parser, command)` adds a command's argparse options (the CLI and
  `python -m loradoctor.integrations.ray check-dataset` build their parsers with it);
- `api_kwargs(command, namespace)` turns parsed arguments into `prepare()`'s keywords;
- `from_config(option, value, base)` reads a `[tool.loradoctor]` value (the pytest plugin;
  paths relative to the pyproject.toml), raising `InputError` naming the key.

A new option is added here once and appears in every front end with the same name: the
pyproject key is the long option's name (`max-length`; a repeatable `--model-arg KEY=VALUE` is
the table `model-args`). Output options (`--format`, `--json`, `--html`, `-v`:
`add_output_arguments`) are not inputs of the run and have no key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from .specs import parse_kwargs, split_pairs

DATASET, MODEL, ADAPTER = "check-dataset", "check-model", "check-adapter"
CHECKS = (DATASET, MODEL, ADAPTER)

# How a value is written, in a pyproject table (the words in an error message).
KIND_WORDS = {"path": "a path (string)", "spec": "a SPEC string (file.py:NAME)",
              "target": "a directory or a SPEC string", "str": "a string", "int": "an integer",
              "float": "a number", "bool": "true or false",
              "codes": "a list of code prefixes (strings)", "list": "a list of strings",
              "pairs": "a table of KEY = VALUE", "peft": "a table of KEY = VALUE",
              "offload": "true, or accelerate's max_memory (a table or 'cpu=8GB')"}


@dataclass(frozen=True)
class Option:
    """One input of a run, as every front end names and reads it."""

    name: str                       # the long option (`--max-length`) and the pyproject key
    kind: str                       # a key of KIND_WORDS
    help: str
    commands: tuple[str, ...] = CHECKS
    arg: str | None = None          # prepare()'s keyword; None: the name with underscores
    metavar: str | None = None
    default: Any = None             # the CLI's default (the API's is the same)
    required: tuple[str, ...] = ()  # commands that cannot run without it
    positional: tuple[str, ...] = ()  # commands where it is the positional argument
    help_for: dict[str, str] = field(default_factory=dict)  # a command's own wording

    @property
    def api_arg(self) -> str:
        return self.arg or self.name.replace("-", "_")

    @property
    def key(self) -> str:
        """The `[tool.loradoctor]` key: the option's name (a repeatable pair's, plural)."""
        return self.name + "s" if self.kind == "pairs" else self.name

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


CODES_HELP = ("only rules whose code starts with one of these comma-separated prefixes "
              "(LD1, LD401)")

OPTIONS: tuple[Option, ...] = (
    Option("data", "path", "chat data for the probe batch", (DATASET, MODEL), metavar="DATA",
           positional=(DATASET,),
           help_for={DATASET: "JSON Lines file (or a .json list) of chats; or parquet / arrow "
                              "files (one, or a quoted glob), or a datasets save_to_disk "
                              "folder"}),
    Option("tokenizer", "path", "tokenizer for --data", (DATASET, MODEL), metavar="TOK",
           required=(DATASET,), help_for={DATASET: "local tokenizer directory"}),
    Option("dataset", "spec", "your dataset class or labelling function: file.py:NAME or "
           "pkg.mod:NAME", (DATASET,), metavar="SPEC"),
    Option("collator", "spec", "the collator your trainer uses: a class built with the "
           "tokenizer (transformers:DataCollatorForLanguageModeling) or a function taking a "
           "list of dataset items (file.py:NAME); the labels it hands the model are compared "
           "with the labels your dataset built", (DATASET,), metavar="SPEC"),
    Option("collator-arg", "pairs", "keyword argument for the --collator class (repeatable), "
           "e.g. mlm=False", (DATASET,), metavar="KEY=VALUE", arg="collator_args"),
    Option("max-length", "int", "the max length you train with", (DATASET,), metavar="N"),
    Option("tokenized", "bool", "DATA rows already hold input_ids and labels (and maybe "
           "attention_mask): judge the labels against the template's structure in the tokens",
           (DATASET,)),
    Option("model", "target", "local base model directory, or your model code: file.py:NAME",
           metavar="MODEL", required=(MODEL, ADAPTER),
           help_for={DATASET: "the model the labels are for (a directory or your model code, "
                              "file.py:NAME): its loss is measured (does it shift labels, which "
                              "index does it ignore) and labels are judged by it (default: the "
                              "HF convention)",
                     MODEL: "local model directory, or your model code: file.py:NAME (a "
                            "function returning the model, a PreTrainedModel subclass, an "
                            "nn.Module class)"}),
    Option("model-arg", "pairs", "keyword argument for --model file.py:NAME (repeatable)",
           metavar="KEY=VALUE", arg="model_args",
           help_for={MODEL: "keyword argument for --model file.py:NAME (repeatable; path=DIR "
                            "loads a PreTrainedModel subclass with from_pretrained)"}),
    Option("apply", "spec", "your apply function: file.py:NAME", (MODEL, ADAPTER),
           metavar="SPEC",
           help_for={ADAPTER: "your apply function (file.py:NAME); the load function beside "
                              "it (load_lora, load_adapter, ...) loads ADAPTER"}),
    Option("apply-arg", "pairs", "keyword argument for the apply function (repeatable)",
           (MODEL,), metavar="KEY=VALUE", arg="apply_args"),
    Option("peft", "peft", "apply PEFT LoRA instead, e.g. "
           "r=8,lora_alpha=16,target_modules=all-linear", (MODEL,), metavar="KEY=VALUE[,...]"),
    Option("adapter", "path", "PEFT adapter folder (adapter_config.json + weights), or your "
           "saved file", (ADAPTER,), metavar="ADAPTER", positional=(ADAPTER,)),
    Option("dtypes", "list", "dtypes to compare, e.g. fp32,fp16,bf16 (default: what the device "
           "runs)", (MODEL,), metavar="LIST"),
    Option("real-dtypes", "bool", "on a CPU, run the fp16 pass (and bf16 where the CPU has no "
           "bf16 kernels) in torch's own CPU kernels instead of emulating its matmuls and "
           "attention in fp32 on fp16 values, as a GPU computes them (slow: many times the fp32 "
           "pass)", (MODEL,)),
    Option("device", "str", "auto, cpu, cuda or cuda:N (default auto)", (MODEL, ADAPTER),
           default="auto"),
    Option("select", "codes", CODES_HELP, metavar="CODES"),
    Option("ignore", "codes", "skip rules with these code prefixes", metavar="CODES"),
    Option("train-steps", "int", "also run N real optimizer steps and report the training "
           "signal", (MODEL,), metavar="N", default=0),
    Option("freeze-base", "bool", "freeze every non-adapter parameter after the apply "
           "function, as a training script that freezes the base later does", (MODEL,)),
    Option("static", "bool", "build the model on the meta device (no weights loaded) and run "
           "only the rules that need no weight values; automatic when the weights do not fit "
           "in memory or the directory holds only config.json", (MODEL,)),
    Option("fuzz", "int", "after the file's records, feed N generated conversations to your "
           "--dataset code and shrink each one it gets wrong", (DATASET,), metavar="N",
           default=0),
    Option("seed", "int", "seed of the --fuzz search (default 0; the same seed finds the "
           "same)", (DATASET,), metavar="S", default=0),
    Option("show", "int", "colored token views for up to N failing samples (default 3)",
           (DATASET,), metavar="N", default=3),
    Option("workers", "int", "processes for rendering and tokenizing the data and for your "
           "--dataset code (each builds its own dataset object; default 1)", (DATASET,),
           metavar="N", default=1),
    Option("shard", "str", "check only the I-th of N contiguous shards of DATA (1/8 ... 8/8); "
           "with --json the report carries what `loradoctor merge` joins", (DATASET,),
           metavar="I/N"),
    Option("offload", "offload", "load the model with accelerate's device_map=\"auto\" over "
           "GPU, CPU and disk, so the value rules run on a model larger than one device; "
           "optionally accelerate's max_memory as cpu=8GB,0=20GB", (MODEL,),
           metavar="MAX_MEMORY"),
    Option("quantize", "str", "load the model directory quantized by bitsandbytes, as QLoRA "
           "guides do: 4bit (NF4, bf16 compute) or 8bit; with --peft, "
           "prepare_model_for_kbit_training runs before get_peft_model", (MODEL,),
           metavar="4bit|8bit"),
    Option("fp16-headroom", "float", "warn (LD302) when an fp32 activation is within X times "
           "fp16's limit 65504 (default 4)", (MODEL,), metavar="X", default=4.0),
)

BY_NAME = {o.name: o for o in OPTIONS}
BY_KEY = {o.key: o for o in OPTIONS}


def for_command(command: str) -> list[Option]:
    return [o for o in OPTIONS if command in o.commands]


# --- the command line -------------------------------------------------------------------------


def add_arguments(parser, command: str) -> None:
    """`command`'s options on an argparse parser, positional argument first."""
    chosen = for_command(command)
    for o in sorted(chosen, key=lambda o: command not in o.positional):
        text = o.help_for.get(command, o.help)
        if command in o.positional:
            parser.add_argument(o.dest, metavar=o.metavar, help=text)
            continue
        flag, extra = f"--{o.name}", {}
        if o.kind == "bool":
            extra = {"action": "store_true"}
        elif o.kind == "pairs":
            extra = {"action": "append", "default": []}
        elif o.kind == "offload":
            extra = {"nargs": "?", "const": True, "default": None}
        else:
            extra = {"type": {"int": int, "float": float}.get(o.kind, str),
                     "default": o.default}
        if o.metavar and o.kind != "bool":
            extra["metavar"] = o.metavar
        if command in o.required:
            extra["required"] = True
        parser.add_argument(flag, help=text, **extra)


# What stdout holds under each `--format` (the words of its help).
OUTPUT_FORMATS = {"text": "the doctor view (text)", "json": "one JSON object (json)",
                  "github": "GitHub Actions annotations (github)",
                  "sarif": "a SARIF 2.1.0 log (sarif)"}


def add_output_arguments(parser, formats: tuple[str, ...] = tuple(OUTPUT_FORMATS)) -> None:
    """How the report is written: the options of every command line that prints one (the CLI
    and Ray's entry point), not inputs of the run, so not pyproject keys. `--json` is
    `--format json`; `--html PATH` writes the page beside whichever format stdout holds."""
    parser.add_argument("--format", choices=formats, default="text",
                        help="what stdout holds: "
                             + ", ".join(OUTPUT_FORMATS[f] for f in formats))
    parser.add_argument("--json", action="store_const", dest="format", const="json",
                        help="write one JSON object to stdout (the same as --format json)")
    parser.add_argument("--html", metavar="PATH",
                        help="also write the whole report as one self-contained HTML page")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show evidence, skipped checks and tracebacks")


def api_kwargs(command: str, namespace: Any) -> dict[str, Any]:
    """Parsed arguments of `command` as `prepare()`'s keywords (with `command` itself)."""
    values = vars(namespace) if not isinstance(namespace, dict) else namespace
    out: dict[str, Any] = {"command": command}
    for o in for_command(command):
        value = values.get(o.dest)
        if o.kind == "pairs":
            value = parse_kwargs(value, f"--{o.name}")
        out[o.api_arg] = value
    return out


# --- [tool.loradoctor] ------------------------------------------------------------------------


def from_config(option: Option, value: Any, base: Path, where: str) -> Any:
    """A pyproject value of `option` as `prepare()` takes it: type-checked (an `InputError`
    naming `where` and the key otherwise), paths made absolute against `base`."""
    if not _has_kind(option.kind, value):
        raise InputError(f"{where}: key {option.key!r} must be {KIND_WORDS[option.kind]}, got "
                         f"{value!r} ({type(value).__name__})")
    return resolve_paths(option.kind, value, base)


def from_override(option: Option, given: Any, base: Path) -> Any:
    """A `--loradoctor-NAME` value (strings from the command line) as `from_config` returns it."""
    flag = f"--loradoctor-{option.name}"
    if option.kind in ("pairs", "peft"):
        return parse_kwargs([p for text in given for p in split_pairs(text)], flag)
    if option.kind in ("codes", "list"):
        return [c.strip() for c in given.split(",") if c.strip()]
    if option.kind in ("int", "float"):
        try:
            return (int if option.kind == "int" else float)(given)
        except ValueError:
            raise InputError(f"{flag} {given!r}: expected {KIND_WORDS[option.kind]}") from None
    if option.kind == "bool":
        return bool(given)
    return resolve_paths(option.kind, given, base)


def _has_kind(kind: str, value: Any) -> bool:
    strings = isinstance(value, list) and all(isinstance(v, str) for v in value)
    return {
        "path": isinstance(value, str), "spec": isinstance(value, str),
        "target": isinstance(value, str), "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "codes": strings, "list": strings,
        "pairs": isinstance(value, dict), "peft": isinstance(value, dict),
        "offload": isinstance(value, (bool, str, dict)),
    }[kind]


def resolve_paths(kind: str, value: Any, base: Path) -> Any:
    """Paths, and the file part of `file.py:NAME`, relative to `base`; the rest as given."""
    def absolute(path: str) -> str:  # symlinks kept as written: the header shows them so
        return os.path.abspath(os.path.join(base, os.path.expanduser(path)))

    if kind == "path":
        return absolute(value)
    if kind in ("spec", "target"):
        target, sep, name = value.rpartition(":")
        if sep and (target.endswith(".py") or "/" in target or "\\" in target):
            return f"{absolute(target)}:{name}"
        if kind == "target" and not sep:
            return absolute(value)
    return value
