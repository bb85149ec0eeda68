"""The command line as a user meets it: help, rules, JSON, exit codes, and every bad input.

Bad-input cases run the real CLI in this process (the `cli` fixture: the same parsing, engine
and renderer). What only a separate process shows, the exit code and a stdout that holds the
report alone, is checked through `python -m loradoctor` (`cli_subprocess`) for each command.

Bad input always means exit code 2 and one line on stderr that names the place, with no
traceback (the traceback only under -v), and nothing of the user's changed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from ..conftest import DATA, FIXTURES, PIPELINES
from ..helpers import assert_clean_input_error, tree_digest

BAD = FIXTURES / "bad_inputs"


def test_help_works_for_every_command(cli_subprocess):
    top = cli_subprocess("--help")
    assert top.code == 0
    for command in ("check-dataset", "check-model", "rules", "reference"):
        assert command in top.out
    assert "exit codes" in top.out


@pytest.mark.parametrize(
    "command,flag",
    [
        ("check-dataset", "--tokenizer"),
        ("check-model", "--apply-arg"),
        ("rules", "CODE"),
        ("reference", "NAME"),
    ],
)
def test_subcommand_help(cli, command, flag):
    with pytest.raises(SystemExit) as exit_info:
        cli(command, "--help")
    assert exit_info.value.code == 0


def test_version_is_exposed():
    import loradoctor

    assert loradoctor.__version__.count(".") == 2


def test_rules_lists_every_rule_and_prints_one_rules_documentation(cli):
    from loradoctor.registry import ALL_RULES

    listed = cli("rules")
    assert listed.code == 0
    for r in ALL_RULES:
        assert r.code in listed.out
    one = cli("rules", "LD100")
    assert one.code == 0
    assert "unreadable-record" in one.out and "Why is this bad?" in one.out


def test_an_unknown_rule_code_is_a_usage_error(cli):
    assert_clean_input_error(cli("rules", "LD999"), "no rule 'LD999'")


@pytest.mark.slow  # a separate process: a torch import of its own
def test_json_output_is_exactly_one_object_on_stdout(cli_subprocess, qwen3_tokenizer_dir):
    result = cli_subprocess(
        "check-dataset",
        DATA / "bad_one_record.jsonl",
        "--tokenizer",
        qwen3_tokenizer_dir,
        "--select",
        "LD100",
        "--json",
    )
    assert result.code == 1, result.err
    data = json.loads(result.out)  # raises if stdout holds anything else
    assert data["tool"] == "loradoctor" and data["command"] == "check-dataset"
    lines = sorted(f["location"] for f in data["findings"] if f["code"] == "LD100")
    assert lines == [f"{DATA / 'bad_one_record.jsonl'}:{n}" for n in (3, 5, 6)]
    assert data["summary"]["records"] == 6 and data["summary"]["records_readable"] == 3
    assert {c["status"] for c in data["checks"]} == {"fail"}


def test_one_bad_record_among_many_is_a_finding_and_the_rest_is_still_checked(
    cli, qwen3_tokenizer_dir
):
    result = cli(
        "check-dataset",
        DATA / "bad_one_record.jsonl",
        "--tokenizer",
        qwen3_tokenizer_dir,
        "--select",
        "LD100",
    )
    assert result.code == 1
    assert "bad_one_record.jsonl:3" in result.out and "3 of 6 records" in result.out


def test_broken_json_lines_are_findings_with_their_line_and_the_rest_is_checked(
    cli, qwen3_tokenizer_dir
):
    result = cli("check-dataset", DATA / "broken_lines.jsonl", "--tokenizer", qwen3_tokenizer_dir,
                 "--json")
    assert result.code == 1, result.err
    data = json.loads(result.out)
    ld100 = [f for f in data["findings"] if f["code"] == "LD100"]
    assert [f["location"] for f in ld100] == [f"{DATA / 'broken_lines.jsonl'}:{n}"
                                              for n in (4, 7, 10)]
    assert all(f["severity"] == "error" and f["message"].startswith("not valid JSON")
               for f in ld100)
    assert "Extra data" in ld100[1]["message"]  # two records written on one line
    assert data["summary"]["records"] == 12 and data["summary"]["records_readable"] == 9
    assert data["summary"]["records_unparseable"] == 3
    # The other nine records were still rendered and checked by the masking rules.
    assert data["summary"]["masking"]["rendered"] == 9
    assert {c["code"] for c in data["checks"] if c["status"] == "fail"} == {"LD100"}


def test_a_few_broken_lines_among_many_are_all_counted_and_the_first_thousand_kept(
    cli, qwen3_tokenizer_dir, tmp_path
):
    good = (DATA / "persona.jsonl").read_bytes().splitlines()[0]
    rows = [good if i % 3 else b'{"messages": [' for i in range(1, 3001)]  # every 3rd broken
    rows[40] = b'{"messages": "caf\xe9"}'  # latin-1 bytes: not UTF-8 text
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")
    result = cli("check-dataset", path, "--tokenizer", qwen3_tokenizer_dir, "--select", "LD100",
                 "--json")
    data = json.loads(result.out)
    assert result.code == 1
    ld100 = data["findings"]
    assert len(ld100) == 11  # ten listed one by one, the rest counted in one finding
    rest = ld100[-1]
    assert rest["evidence"]["count"] == 1001 - 10
    assert len(rest["evidence"]["lines"]) == 990 and rest["evidence"]["lines"][0] == 33
    assert rest["message"].startswith("991 more lines are not valid JSON or not readable")
    assert "(lines of the first 990 in evidence)" in rest["message"]
    assert 41 in rest["evidence"]["lines"]  # the line that is not UTF-8 is one of them
    assert data["summary"]["records"] == 3000 and data["summary"]["records_readable"] == 1999
    assert data["summary"]["records_unparseable"] == 1001


@pytest.mark.parametrize(
    "data,fragments",
    [
        ("not_json.jsonl", ["not_json.jsonl:1", "not valid JSON", "no line of the file"]),
        ("bad_all_records.jsonl", ["bad_all_records.jsonl:1", "no conversation"]),
        ("empty.jsonl", ["empty.jsonl", "holds no records"]),
        ("missing.jsonl", ["missing.jsonl", "no such file"]),
    ],
)
def test_unreadable_data_files_exit_2_naming_the_file_and_line(
    cli, qwen3_tokenizer_dir, data, fragments
):
    assert_clean_input_error(
        cli("check-dataset", DATA / data, "--tokenizer", qwen3_tokenizer_dir), *fragments
    )


def test_a_missing_tokenizer_directory_and_a_hub_id_exit_2(cli):
    assert_clean_input_error(
        cli(
            "check-dataset", DATA / "persona.jsonl", "--tokenizer", "/no/such/tokenizer"
        ),
        "/no/such/tokenizer",
        "no such directory",
    )
    assert_clean_input_error(
        cli("check-dataset", DATA / "persona.jsonl", "--tokenizer", "Qwen/Qwen3-0.6B"),
        "never downloads from a hub",
    )


@pytest.mark.slow  # 1.5 to 4 s, measured in the day-to-day lane
def test_a_tokenizer_without_a_chat_template_exits_2(cli, qwen3_tokenizer_dir, tmp_path):
    plain = tmp_path / "no-template"
    shutil.copytree(qwen3_tokenizer_dir, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert_clean_input_error(
        cli("check-dataset", DATA / "persona.jsonl", "--tokenizer", plain),
        str(plain),
        "has no chat template",
    )


@pytest.mark.parametrize(
    "spec,fragments",
    [
        (f"{PIPELINES / 'missing.py'}:LoRADataset", ["missing.py", "no such file"]),
        (f"{PIPELINES / 'minimind_dataset.py'}:NoSuchClass", ["has no attribute 'NoSuchClass'"]),
        (f"{BAD / 'import_raises.py'}:apply_lora", ["import_raises.py:4", "RuntimeError"]),
    ],
)
def test_a_dataset_spec_that_cannot_load_exits_2(
    cli, qwen3_tokenizer_dir, spec, fragments
):
    assert_clean_input_error(
        cli(
            "check-dataset",
            DATA / "persona.jsonl",
            "--tokenizer",
            qwen3_tokenizer_dir,
            "--dataset",
            spec,
        ),
        *fragments,
    )


def test_an_apply_function_that_raises_exits_2_naming_its_line(cli, tiny_llama_dir):
    assert_clean_input_error(
        cli(
            "check-model",
            "--model",
            tiny_llama_dir,
            "--apply",
            f"{BAD / 'apply_raises.py'}:apply_lora",
        ),
        "apply_raises.py:5",
        "ValueError: rank 8 is not supported",
    )


def test_a_missing_model_directory_and_bad_apply_args_exit_2(cli, tiny_llama_dir):
    assert_clean_input_error(
        cli("check-model", "--model", "/no/such/model"), "no such directory"
    )
    assert_clean_input_error(
        cli(
            "check-model",
            "--model",
            tiny_llama_dir,
            "--apply",
            f"{PIPELINES / 'minimind_lora.py'}:apply_lora",
            "--apply-arg",
            "ranks=8",
        ),
        "unexpected keyword argument 'ranks'",
    )
    assert_clean_input_error(
        cli("check-model", "--model", tiny_llama_dir, "--dtypes", "fp8"), "dtype 'fp8'"
    )


def test_verbose_shows_the_traceback_of_an_input_error(cli, tiny_llama_dir):
    result = cli(
        "check-model",
        "--model",
        tiny_llama_dir,
        "--apply",
        f"{BAD / 'apply_raises.py'}:apply_lora",
        "-v",
    )
    assert result.code == 2 and "Traceback" in result.err


@pytest.mark.slow  # a separate process: a torch import of its own
def test_bad_input_exits_2_through_the_real_process(cli_subprocess, qwen3_tokenizer_dir):
    result = cli_subprocess(
        "check-dataset", DATA / "not_json.jsonl", "--tokenizer", qwen3_tokenizer_dir
    )
    assert_clean_input_error(result, "not_json.jsonl:1")
    assert result.out == ""


@pytest.mark.slow  # a separate process: transformers imported
def test_rules_exits_0_and_an_unknown_code_2_through_the_real_process(cli_subprocess):
    listed = cli_subprocess("rules")
    assert listed.code == 0 and "LD100" in listed.out
    unknown = cli_subprocess("rules", "LD999")
    assert_clean_input_error(unknown, "no rule 'LD999'")
    assert unknown.out == ""


def test_main_in_process_hands_back_the_callers_warning_filters(cli, qwen3_tokenizer_dir):
    """The CLI silences the libraries' warnings for its run only: called in-process (a test, a
    notebook), a global "ignore" left behind would hide the caller's later warnings."""
    import warnings
    before = list(warnings.filters)
    result = cli("check-dataset", DATA / "persona.jsonl", "--tokenizer", qwen3_tokenizer_dir,
                 "--select", "LD100")
    assert result.code == 0, result.err
    assert warnings.filters == before


def test_usage_errors_exit_2(cli_subprocess):
    assert cli_subprocess("check-dataset").code == 2  # DATA and --tokenizer missing
    assert cli_subprocess("no-such-command").code == 2


def test_nothing_of_the_users_is_changed(cli, qwen3_tokenizer_dir, tiny_llama_dir, tmp_path):
    data = tmp_path / "train.jsonl"
    shutil.copy(DATA / "bad_one_record.jsonl", data)
    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    code = tmp_path / "code"
    code.mkdir()
    for name in ("minimind_dataset.py", "minimind_lora.py"):
        shutil.copy(PIPELINES / name, code / name)
    before = (tree_digest(data), tree_digest(model), tree_digest(code))
    cli(
        "check-dataset",
        data,
        "--tokenizer",
        qwen3_tokenizer_dir,
        "--dataset",
        f"{code / 'minimind_dataset.py'}:LoRADataset",
    )
    cli(
        "check-model",
        "--model",
        model,
        "--apply",
        f"{code / 'minimind_lora.py'}:apply_lora_default_args",
    )
    assert (tree_digest(data), tree_digest(model), tree_digest(code)) == before
    assert not (code / "__pycache__").exists()


@pytest.mark.slow  # a separate process: a torch import of its own
def test_prints_from_the_users_code_stay_off_stdout_under_json(cli_subprocess, tiny_llama_dir):
    result = cli_subprocess(
        "check-model",
        "--model",
        tiny_llama_dir,
        "--apply",
        f"{PIPELINES / 'chatty_lora.py'}:apply_lora",
        "--dtypes",
        "fp32",
        "--json",
    )
    data = json.loads(result.out)
    assert data["command"] == "check-model" and result.code == 0, result.err
    assert "applying LoRA rank=8" in result.err


@pytest.mark.parametrize(
    "name",
    ["persona.jsonl", "chat_messages.jsonl", "chat_sharegpt.jsonl",
     "chat_prompt_completion.jsonl", "chat_list.json"],
)
def test_every_record_shape_passes_ld100(cli, qwen3_tokenizer_dir, name):
    result = cli("check-dataset", DATA / name, "--tokenizer", qwen3_tokenizer_dir,
                 "--select", "LD100", "--json")
    data = json.loads(result.out)
    assert result.code == 0 and data["findings"] == []
    assert data["checks"] == [{**data["checks"][0], "status": "pass"}]


def test_check_model_gives_the_same_report_every_run(cli, tiny_llama_dir):
    """The adapters' random start (PEFT's A here) is drawn from the run's seed: two runs of
    the same command give the same figures, not only the same findings."""
    import re
    import torch

    def report() -> str:
        torch.manual_seed(torch.seed())  # whatever the process drew before
        result = cli("check-model", "--model", tiny_llama_dir, "--peft",
                     "r=4,lora_alpha=8,target_modules=all-linear", "--dtypes", "fp32",
                     "--select", "LD4,LD5", "--json")
        return re.sub(r'"(duration_s|seconds)": [0-9.e-]+', "", result.out)

    assert report() == report()
