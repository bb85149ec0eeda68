"""One options table: every CLI option has its `[tool.loradoctor]` key, its pytest override and
its Ray option, and a value means the same wherever it is written."""

from __future__ import annotations

import argparse

import pytest

from loradoctor import cli
from loradoctor.inputs import options, specs
from loradoctor.integrations import ray

pytest_plugins = ["pytester"]

# How a report is written (`--json` is `--format json`): not inputs of a run.
OUTPUT_OPTIONS = {"format", "html", "verbose", "help"}

# A sample value per kind, as written on the command line and as written in a pyproject table.
SAMPLES = {
    "path": ("/data/train.jsonl", "/data/train.jsonl"),
    "spec": ("/code/data.py:SFTDataset", "/code/data.py:SFTDataset"),
    "target": ("/models/qwen3", "/models/qwen3"),
    "str": ("2/8", "2/8"),
    "int": ("7", 7),
    "float": ("2.5", 2.5),
    "codes": ("LD1,LD401", ["LD1", "LD401"]),
    "list": ("fp32,bf16", ["fp32", "bf16"]),
    "pairs": (["rank=8", "name=q_proj"], {"rank": 8, "name": "q_proj"}),
    "peft": ("r=8,lora_alpha=16,target_modules=q_proj,v_proj",
             {"r": 8, "lora_alpha": 16, "target_modules": "q_proj,v_proj"}),
    "offload": ("cpu=8GB", "cpu=8GB"),
}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _cli_options(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions} - OUTPUT_OPTIONS


def _meaning(kind: str, value):
    """What `prepare()` makes of a value (strings and lists of codes mean the same)."""
    if kind in ("codes", "list") and isinstance(value, str):
        return [v.strip() for v in value.split(",")]
    if kind == "peft":
        return specs.peft_kwargs(value)
    return value


@pytest.mark.parametrize("command", options.CHECKS)
def test_every_cli_option_is_in_the_table_with_a_pyproject_key(command):
    parser = _subparsers(cli.build_parser())[command]
    table = {o.dest for o in options.for_command(command)}
    assert _cli_options(parser) == table
    for o in options.for_command(command):
        assert options.BY_KEY[o.key] is o


@pytest.mark.parametrize("option", options.OPTIONS, ids=lambda o: o.name)
def test_a_value_means_the_same_on_the_command_line_and_in_pyproject(option, tmp_path):
    command = option.commands[0]
    written, in_toml = SAMPLES.get(option.kind, (None, True))  # a bool: a flag, and true
    argv = [command]
    for required in options.for_command(command):  # what the command cannot run without
        if command in required.required and required is not option:
            argv += [f"--{required.name}", "/x"]
        if command in required.positional and required is not option:
            argv.append("/x")
    if option.kind == "bool":
        argv.append(f"--{option.name}")
    elif option.kind == "pairs":
        for pair in written:
            argv += [f"--{option.name}", pair]
    elif command in option.positional:
        argv.append(written)
    else:
        argv += [f"--{option.name}", written]
    from_cli = options.api_kwargs(command, cli.build_parser().parse_args(argv))[option.api_arg]
    from_toml = options.from_config(option, in_toml, tmp_path, "pyproject.toml [tool.loradoctor]")
    assert _meaning(option.kind, from_cli) == _meaning(option.kind, from_toml)


def test_a_value_of_the_wrong_type_in_pyproject_names_the_key(tmp_path):
    with pytest.raises(Exception, match="key 'max-length' must be an integer"):
        options.from_config(options.BY_KEY["max-length"], "long", tmp_path, "pyproject.toml")


def test_the_pytest_plugin_has_an_override_for_every_option(pytester):
    result = pytester.runpytest("--help")
    for o in options.OPTIONS:
        result.stdout.fnmatch_lines([f"*--loradoctor-{o.name}*"])


def test_the_ray_entry_point_parses_check_dataset_options_as_the_cli_does(capsys):
    with pytest.raises(SystemExit):
        ray.main(["--shards", "2", "check-dataset", "--help"])
    text = capsys.readouterr().out
    for o in options.for_command(options.DATASET):
        assert (o.metavar if options.DATASET in o.positional else f"--{o.name}") in text
