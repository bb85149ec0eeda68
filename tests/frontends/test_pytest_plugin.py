"""The pytest plugin end to end with `pytester`: scratch projects configured only through the
`[tool.loradoctor]` table of their pyproject.toml.

The MiniMind-style dataset (fixtures/pipelines/minimind_dataset.py) with the real Qwen3
tokenizer fails `pytest --loradoctor` with an LD101 item; its fixed twin passes; without
`--loradoctor` nothing is collected and neither torch nor transformers is imported. Skipped
rules, warnings (and `--loradoctor-strict`), a misconfigured table, the `loradoctor_report`
fixture, JUnit XML and pytest-xdist (`-n 2 --dist loadfile`) are covered too.
"""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET

import pytest

from ..conftest import DATA, FIXTURES, PIPELINES
from ..helpers import outcomes

pytestmark = pytest.mark.usefixtures('load_each_tokenizer_once', 'modules_imported_once')

pytest_plugins = ["pytester"]

USAGE_ERROR = 4  # pytest.ExitCode.USAGE_ERROR


@pytest.fixture
def project(pytester, qwen3_tokenizer_dir):
    """A scratch project: the data and the dataset code copied in, a pyproject.toml written."""
    shutil.copy(DATA / "persona.jsonl", pytester.path / "persona.jsonl")
    shutil.copy(PIPELINES / "minimind_dataset.py", pytester.path / "minimind_dataset.py")
    (pytester.path / "masking").mkdir()
    for name in ("ld103.py", "labeling.py", "multiturn.jsonl"):
        shutil.copy(FIXTURES / "masking" / name, pytester.path / "masking" / name)

    def write(body: str) -> None:
        pytester.makefile(".toml", pyproject=f'[tool.loradoctor]\ntokenizer = '
                                             f'"{qwen3_tokenizer_dir}"\n{body}')
    return write


def test_the_plugin_adds_the_loradoctor_option_group(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*loradoctor pre-training checks*", "*--loradoctor *",
                                 "*--loradoctor-strict*", "*--loradoctor-max-length=*",
                                 "*--loradoctor-apply-arg=KEY=VALUE*"])


def test_the_minimind_dataset_fails_with_an_ld101_item_and_the_doctor_views_text(
        project, pytester, qwen3_tokenizer_dir):
    project('data = "persona.jsonl"\ndataset = "minimind_dataset.py:LoRADataset"\n')
    result = pytester.runpytest("--loradoctor", "-v", "-p", "no:cacheprovider",
                                "--junitxml=report.xml")
    assert result.ret == 1
    seen = outcomes(result)
    assert seen["loradoctor::LD101::no-supervised-tokens"] == "FAILED"
    assert seen["loradoctor::LD102::marker-from-missing-special-token"] == "FAILED"
    assert seen["loradoctor::LD100::unreadable-record"] == "PASSED"
    assert seen["loradoctor::LD115::dataset-code-fails-on-input"] == "SKIPPED"
    text = result.stdout.str()
    assert f"loradoctor: checking data persona.jsonl, tokenizer {qwen3_tokenizer_dir}" in text
    assert f"collected {len(seen)} items" in text and len(seen) >= 16
    assert "dataset minimind_dataset.py:LoRADataset" in text
    # The failure is the rule's part of the doctor view, not a traceback into loradoctor.
    section = text.split("_ LD101 no-supervised-tokens _")[1].split("\n_")[0]
    assert "✗ LD101 no-supervised-tokens  0 of 24 samples supervise at least one token" in section
    assert "24 of 24 samples have no supervised token" in section and "fix: " in section
    assert "evidence: " in section and "legend:" in section and "!I!" in section
    assert "Traceback" not in section and "loradoctor/" not in section
    cases = {(c.get("classname"), c.get("name")): c
             for c in ET.parse(pytester.path / "report.xml").iter("testcase")}
    failed = cases[("loradoctor.LD101", "no-supervised-tokens")]
    assert failed.find("failure") is not None
    assert cases[("loradoctor.LD100", "unreadable-record")].find("failure") is None


def test_the_fixed_twin_passes_and_rules_that_do_not_apply_are_skipped_with_their_reason(
        project, pytester):
    project('data = "persona.jsonl"\ndataset = "minimind_dataset.py:LoRADatasetFixed"\n')
    result = pytester.runpytest("--loradoctor", "-rs", "-p", "no:cacheprovider")
    assert result.ret == 0
    counts = result.parseoutcomes()
    assert counts["passed"] >= 14 and counts["skipped"] >= 1 and "failed" not in counts
    result.stdout.fnmatch_lines(["*SKIPPED*LD115: needs --fuzz N*"])


def test_without_the_flag_nothing_is_collected_and_nothing_heavy_is_imported(project,
                                                                             pytester):
    project('data = "persona.jsonl"\ndataset = "minimind_dataset.py:LoRADataset"\n')
    pytester.makepyfile(test_light="""
        import sys

        def test_no_heavy_import():
            heavy = [m for m in ("torch", "transformers", "rich", "loradoctor.registry",
                                 "loradoctor.masking") if m in sys.modules]
            assert not heavy, heavy
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == 0
    assert result.parseoutcomes() == {"passed": 1}  # only the project's own test
    assert "loradoctor::" not in result.stdout.str()


def test_a_warning_passes_with_a_pytest_warning_and_fails_under_strict(project, pytester):
    project('data = "masking/multiturn.jsonl"\ndataset = "masking/ld103.py:bad"\n'
            'select = ["LD103"]\n')
    result = pytester.runpytest("--loradoctor", "-p", "no:cacheprovider")
    assert result.ret == 0 and result.parseoutcomes()["passed"] == 1
    result.stdout.fnmatch_lines(["*LoradoctorWarning*! LD103 prompt-tokens-supervised*",
                                 "*warning LD103*"])
    assert "legend:" not in result.stdout.str()  # the token views are for a failing item

    strict = pytester.runpytest("--loradoctor", "--loradoctor-strict", "-p", "no:cacheprovider")
    assert strict.ret == 1 and strict.parseoutcomes()["failed"] == 1
    strict.stdout.fnmatch_lines(["*! LD103 prompt-tokens-supervised*", "*warning LD103*",
                                 "*legend:*"])


@pytest.mark.parametrize("body,message", [
    ('data = "persona.jsonl"\nmax_lenght = 64\n', "unknown key 'max_lenght'; did you mean"),
    ('data = "persona.jsonl"\nmax-length = "sixty"\n', "key 'max-length' must be an integer"),
    ('data = "persona.jsonl"\nselect = "LD1"\n', "key 'select' must be a list of code prefixes"),
    ('data = "missing.jsonl"\n', "data "),
])
def test_a_misconfigured_table_is_a_usage_error_that_names_the_key_and_the_file(
        project, pytester, body, message):
    project(body)
    result = pytester.runpytest("--loradoctor", "-p", "no:cacheprovider")
    assert result.ret == USAGE_ERROR
    err = result.stderr.str()
    assert message in err and "pyproject.toml" in err and "[tool.loradoctor]" in err
    assert "Traceback" not in err + result.stdout.str()


def test_a_command_line_option_overrides_one_key(project, pytester):
    project('data = "persona.jsonl"\ndataset = "minimind_dataset.py:LoRADataset"\n'
            'select = ["LD101"]\n')
    result = pytester.runpytest("--loradoctor", "-p", "no:cacheprovider",
                                "--loradoctor-dataset", "minimind_dataset.py:LoRADatasetFixed")
    assert result.ret == 0 and result.parseoutcomes() == {"passed": 1}


def test_the_report_fixture_and_the_api_are_usable_in_the_projects_own_tests(
        project, pytester, qwen3_tokenizer_dir):
    project('data = "persona.jsonl"\ndataset = "minimind_dataset.py:LoRADatasetFixed"\n')
    pytester.makepyfile(test_pipeline=f"""
        import loradoctor

        def test_the_configured_pipeline_is_healthy(loradoctor_report):
            assert loradoctor_report.ok
            assert {{r.code for r in loradoctor_report.results}} >= {{"LD101", "LD102"}}

        def test_the_buggy_class_is_not():
            report = loradoctor.check(data="persona.jsonl", tokenizer=r"{qwen3_tokenizer_dir}",
                                      dataset="minimind_dataset.py:LoRADataset")
            assert not report.ok
            assert {{f.code for f in report.errors}} == {{"LD101", "LD102"}}
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    assert result.parseoutcomes() == {"passed": 2}


@pytest.mark.slow  # a pytest of its own with two workers, each importing torch
def test_under_xdist_the_workers_agree_and_one_of_them_measures_the_pipeline(project, pytester):
    pytest.importorskip("xdist")
    # The dataset class, wrapped to leave one file per process that builds it.
    pytester.makepyfile(counted_dataset="""
        import os, pathlib
        from minimind_dataset import LoRADataset as _Base

        class LoRADataset(_Base):
            def __init__(self, tokenizer, path, max_length=512):
                pathlib.Path(f"built-{os.getpid()}").touch()
                super().__init__(tokenizer, path, max_length)
    """)
    project('data = "persona.jsonl"\ndataset = "counted_dataset.py:LoRADataset"\n'
            'select = ["LD100", "LD101", "LD102"]\n')
    # --dist loadfile sends the one `loradoctor` node's rules to one worker.
    result = pytester.runpytest_subprocess("--loradoctor", "-n", "2", "--dist", "loadfile",
                                           "-p", "no:cacheprovider", "-rA")
    assert result.ret == 1
    assert result.parseoutcomes() == {"failed": 2, "passed": 1}
    assert len(list(pytester.path.glob("built-*"))) == 1  # the pipeline measured once in all
    result.stdout.fnmatch_lines(["*FAILED loradoctor::LD101::no-supervised-tokens*"])
