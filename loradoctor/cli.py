"""Command line: parse arguments, build a context, run the engine, render, return the exit code.

Exit codes (the contract): 0 no error finding, 1 an error finding or a crashed check,
2 usage or input error (one line on stderr; the traceback only with -v).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback

from .version import __version__
from .environment import quiet_libraries
from .errors import InputError
from .inputs import options


COMMAND_TEXT = {
    options.DATASET: ("chat-template label masking and special tokens",
                      "Check a chat dataset, its tokenizer and (with --dataset) your own "
                      "labelling code against the chat template."),
    options.MODEL: ("your LoRA code (or PEFT) on a real model",
                    "Apply your LoRA code to a local model and check wiring, identity start, "
                    "training signal, numerics and persistence."),
    options.ADAPTER: ("a saved adapter against its base model",
                      "Check a saved adapter (a PEFT folder, or with --apply the file your own "
                      "save function wrote): keys against the base, factors, config, update "
                      "sizes, and its effect on the logits, loaded and merged."),
}


def add_check_command(sub, command: str) -> argparse.ArgumentParser:
    """A check command with its options from the one options table (`inputs/options.py`)."""
    short, description = COMMAND_TEXT[command]
    p = sub.add_parser(command, help=short, description=description)
    options.add_arguments(p, command)
    options.add_output_arguments(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loradoctor",
        description="Catch silent LoRA fine-tuning bugs before training.",
        epilog="exit codes: 0 no error finding, 1 error finding or crashed check, "
               "2 usage or input error",
    )
    parser.add_argument("--version", action="version", version=f"loradoctor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in options.CHECKS:
        add_check_command(sub, command)

    mg = sub.add_parser("merge", help="join check-dataset --shard partial reports into one",
                        description="Join the --json reports of check-dataset --shard 1/N ... "
                                    "N/N into the report one run over the whole data gives.")
    mg.add_argument("parts", nargs="+", metavar="PART.json",
                    help="the partial reports, one per shard, in any order")
    options.add_output_arguments(mg)

    rl = sub.add_parser("rules", help="list the rules, or print one rule's documentation")
    rl.add_argument("code", nargs="?", metavar="CODE")

    rf = sub.add_parser("reference", help="the reference training runs (buggy vs fixed)")
    rf.add_argument("name", nargs="?", metavar="NAME")
    # Its report is about the runs, not the user's files: no annotations, no SARIF.
    options.add_output_arguments(rf, formats=("text", "json"))
    rf.add_argument("--plot", metavar="DIR",
                    help="also write one PNG per run into DIR (loss per step, buggy vs fixed, "
                         "where it went wrong marked; needs loradoctor[plot])")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    verbose = getattr(args, "verbose", False)
    with quiet_libraries():  # for this run only
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
    from .render_output import Output, write_report
    from .render_places import run_sources

    output = Output.from_args(args)
    output.check_html_path()
    if args.command == "reference":
        from .reference.runner import run_reference
        return run_reference(args.name, as_json=output.format == "json", plot=args.plot,
                             html=output.html)

    from . import api
    from .render import console

    if args.command == "merge":
        from .shards import merge_partials, read_partials
        parts = read_partials(args.parts)
        report, title = merge_partials(parts)
        output.sources = run_sources(parts[0]["inputs"])
        write_report(report, output, title=f"loradoctor {title}", version=__version__)
        return report.exit_code

    inputs = options.api_kwargs(args.command, args)
    err = console(stderr=True)
    show_progress = err.is_terminal and not output.machine
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
    output.sources = run_sources(inputs)
    write_report(report, output, title=f"loradoctor {run.title}", version=__version__)
    return report.exit_code
