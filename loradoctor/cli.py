"""Command line: parse arguments, build a context, run the engine, render, return the exit code.

Exit codes (the contract): 0 no error finding, 1 an error finding or a crashed check,
2 usage or input error (one line on stderr; the traceback only with -v).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from pathlib import Path

from . import __version__
from .errors import InputError


def _quiet_libraries() -> None:
    # Nothing may reach a hub, and library chatter (progress bars, warnings) must not mix
    # with the report or with JSON.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings
    warnings.filterwarnings("ignore")
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - transformers missing is reported where it is needed
        pass


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--select", metavar="CODES", help="only rules whose code starts with one of "
                   "these comma-separated prefixes (LD1, LD401)")
    p.add_argument("--ignore", metavar="CODES", help="skip rules with these code prefixes")
    p.add_argument("--json", action="store_true", help="write one JSON object to stdout")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show evidence, skipped checks and tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loradoctor",
        description="Catch silent LoRA fine-tuning bugs before training.",
        epilog="exit codes: 0 no error finding, 1 error finding or crashed check, "
               "2 usage or input error",
    )
    parser.add_argument("--version", action="version", version=f"loradoctor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    ds = sub.add_parser("check-dataset", help="chat-template label masking and special tokens",
                        description="Check a chat dataset, its tokenizer and (with --dataset) "
                                    "your own labelling code against the chat template.")
    ds.add_argument("data", metavar="DATA",
                    help="JSON Lines file (or a .json list) of chats; or parquet / arrow files "
                         "(one, or a quoted glob), or a datasets save_to_disk folder")
    ds.add_argument("--tokenizer", required=True, metavar="TOK", help="local tokenizer directory")
    ds.add_argument("--model", metavar="MODEL", help="the model the labels are for (a directory "
                    "or your model code, file.py:NAME): its loss is measured (does it shift "
                    "labels, which index does it ignore) and labels are judged by it (default: "
                    "the HF convention)")
    ds.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="keyword argument for --model file.py:NAME (repeatable)")
    ds.add_argument("--dataset", metavar="SPEC",
                    help="your dataset class or labelling function: file.py:NAME or pkg.mod:NAME")
    ds.add_argument("--max-length", type=int, metavar="N", help="the max length you train with")
    ds.add_argument("--tokenized", action="store_true",
                    help="DATA rows already hold input_ids and labels (and maybe attention_mask): "
                         "judge the labels against the template's structure in the tokens")
    ds.add_argument("--fuzz", type=int, default=0, metavar="N",
                    help="after the file's records, feed N generated conversations to your "
                         "--dataset code and shrink each one it gets wrong")
    ds.add_argument("--seed", type=int, default=0, metavar="S",
                    help="seed of the --fuzz search (default 0; the same seed finds the same)")
    ds.add_argument("--show", type=int, default=3, metavar="N",
                    help="colored token views for up to N failing samples (default 3)")
    ds.add_argument("--workers", type=int, default=1, metavar="N",
                    help="processes for rendering and tokenizing the data and for your "
                         "--dataset code (each builds its own dataset object; default 1)")
    ds.add_argument("--shard", metavar="I/N",
                    help="check only the I-th of N contiguous shards of DATA (1/8 ... 8/8); "
                         "with --json the report carries what `loradoctor merge` joins")
    _common(ds)

    md = sub.add_parser("check-model", help="your LoRA code (or PEFT) on a real model",
                        description="Apply your LoRA code to a local model and check wiring, "
                                    "identity start, training signal, numerics and persistence.")
    md.add_argument("--model", required=True, metavar="MODEL",
                    help="local model directory, or your model code: file.py:NAME (a function "
                         "returning the model, a PreTrainedModel subclass, an nn.Module class)")
    md.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="keyword argument for --model file.py:NAME (repeatable; path=DIR loads a "
                         "PreTrainedModel subclass with from_pretrained)")
    md.add_argument("--apply", metavar="SPEC", help="your apply function: file.py:NAME")
    md.add_argument("--apply-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="keyword argument for the apply function (repeatable)")
    md.add_argument("--peft", metavar="KEY=VALUE[,...]",
                    help="apply PEFT LoRA instead, e.g. r=8,lora_alpha=16,target_modules=all-linear")
    md.add_argument("--data", metavar="DATA", help="chat data for the probe batch")
    md.add_argument("--tokenizer", metavar="TOK", help="tokenizer for --data")
    md.add_argument("--dtypes", metavar="LIST",
                    help="dtypes to compare, e.g. fp32,fp16,bf16 (default: what the device runs)")
    md.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    md.add_argument("--train-steps", type=int, default=0, metavar="N",
                    help="also run N real optimizer steps and report the training signal")
    md.add_argument("--freeze-base", action="store_true",
                    help="freeze every non-adapter parameter after the apply function, as a "
                         "training script that freezes the base later does")
    md.add_argument("--static", action="store_true",
                    help="build the model on the meta device (no weights loaded) and run only "
                         "the rules that need no weight values; automatic when the weights do "
                         "not fit in memory or the directory holds only config.json")
    md.add_argument("--offload", nargs="?", const=True, default=None, metavar="MAX_MEMORY",
                    help="load the model with accelerate's device_map=\"auto\" over GPU, CPU "
                         "and disk, so the value rules run on a model larger than one device; "
                         "optionally accelerate's max_memory as cpu=8GB,0=20GB")
    md.add_argument("--fp16-headroom", type=float, default=4.0, metavar="X",
                    help="warn (LD302) when an fp32 activation is within X times fp16's limit "
                         "65504 (default 4)")
    _common(md)

    ad = sub.add_parser("check-adapter", help="a saved adapter against its base model",
                        description="Check a saved adapter (a PEFT folder, or with --apply the "
                                    "file your own save function wrote): keys against the base, "
                                    "factors, config, update sizes, and its effect on the "
                                    "logits, loaded and merged.")
    ad.add_argument("adapter", metavar="ADAPTER",
                    help="PEFT adapter folder (adapter_config.json + weights), or your saved file")
    ad.add_argument("--model", required=True, metavar="MODEL",
                    help="local base model directory, or your model code: file.py:NAME")
    ad.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="keyword argument for --model file.py:NAME (repeatable)")
    ad.add_argument("--apply", metavar="SPEC",
                    help="your apply function (file.py:NAME); the load function beside it "
                         "(load_lora, load_adapter, ...) loads ADAPTER")
    ad.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    _common(ad)

    mg = sub.add_parser("merge", help="join check-dataset --shard partial reports into one",
                        description="Join the --json reports of check-dataset --shard 1/N ... "
                                    "N/N into the report one run over the whole data gives.")
    mg.add_argument("parts", nargs="+", metavar="PART.json",
                    help="the partial reports, one per shard, in any order")
    mg.add_argument("--json", action="store_true", help="write one JSON object to stdout")
    mg.add_argument("-v", "--verbose", action="store_true",
                    help="show evidence, skipped checks and tracebacks")

    rl = sub.add_parser("rules", help="list the rules, or print one rule's documentation")
    rl.add_argument("code", nargs="?", metavar="CODE")

    rf = sub.add_parser("reference", help="the reference training runs (buggy vs fixed)")
    rf.add_argument("name", nargs="?", metavar="NAME")
    rf.add_argument("--json", action="store_true", help="write one JSON object to stdout")
    rf.add_argument("--plot", metavar="DIR",
                    help="also write one PNG per run into DIR (loss per step, buggy vs fixed, "
                         "where it went wrong marked; needs loradoctor[plot])")
    return parser


def parse_peft(text: str) -> dict:
    """`r=8,lora_alpha=16,target_modules=q_proj,v_proj`: a bare item continues the last value."""
    from .load import parse_kwargs
    items: list[str] = []
    for part in text.split(","):
        if "=" in part or not items:
            items.append(part)
        else:
            items[-1] += "," + part
    return parse_kwargs(items, "--peft")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    verbose = getattr(args, "verbose", False)
    _quiet_libraries()
    try:
        return _dispatch(args)
    except InputError as exc:
        if verbose:
            traceback.print_exc()
        print(f"loradoctor: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("loradoctor: interrupted", file=sys.stderr)
        return 130


def _dispatch(args) -> int:
    from . import registry

    if args.command == "rules":
        from .render import print_rule_doc, print_rules
        if args.code:
            print_rule_doc(registry.get(args.code))
        else:
            print_rules(registry.ALL_RULES)
        return 0
    if args.command == "reference":
        from .reference.runner import run_reference
        return run_reference(args.name, as_json=args.json, plot=args.plot)

    from . import api
    from .load import parse_kwargs
    from .render import console, print_json, print_report

    if args.command == "merge":
        from .shards import merge_partials, read_partials
        report, title = merge_partials(read_partials(args.parts))
        if args.json:
            print_json(report, __version__)
        else:
            print_report(report, title=f"loradoctor {title}", verbose=args.verbose)
        return report.exit_code

    if args.command == "check-dataset":
        inputs = dict(data=args.data, tokenizer=args.tokenizer, dataset=args.dataset,
                      max_length=args.max_length, show=args.show, workers=args.workers,
                      tokenized=args.tokenized, fuzz=args.fuzz, seed=args.seed,
                      shard=args.shard,
                      model=args.model, model_args=parse_kwargs(args.model_arg, "--model-arg"))
    elif args.command == "check-adapter":
        inputs = dict(adapter=args.adapter, model=args.model, apply=args.apply,
                      device=args.device,
                      model_args=parse_kwargs(args.model_arg, "--model-arg"))
    else:
        inputs = dict(model=args.model, apply=args.apply, apply_args=parse_kwargs(args.apply_arg),
                      peft=args.peft, data=args.data,
                      tokenizer=args.tokenizer, dtypes=args.dtypes, device=args.device,
                      train_steps=args.train_steps, fp16_headroom=args.fp16_headroom,
                      freeze_base=args.freeze_base, static=args.static,
                      offload=args.offload,
                      model_args=parse_kwargs(args.model_arg, "--model-arg"))
    inputs.update(select=args.select, ignore=args.ignore, command=args.command)
    err = console(stderr=True)
    show_progress = err.is_terminal and not args.json
    # The user's code runs inside these calls; whatever it prints goes to stderr, so stdout
    # holds only the report (and exactly one JSON object under --json).
    with contextlib.redirect_stdout(sys.stderr):
        if show_progress:
            with err.status("loading inputs ..."):
                run = api.prepare(**inputs)
            run.set_progress_console(err)
            with err.status("") as status:
                report = run.execute(on_progress=lambda r: status.update(f"{r.code} {r.name} ..."))
        else:
            run = api.prepare(**inputs)
            report = run.execute()
    if args.json:
        print_json(report, __version__)
    else:
        print_report(report, title=f"loradoctor {run.title}", verbose=args.verbose)
    return report.exit_code
