"""Shared test fixtures: real artifacts from the cache (built on first use) and the real CLI.

`cli` runs `loradoctor.cli.main` in this process (the real argument parsing, engine and
renderer, without paying a torch import per test); `cli_subprocess` runs `python -m
loradoctor` for the tests that must see the process boundary (exit codes, stdout purity).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

# CI must not fail on a one-in-a-million draw that a local run never saw: under CI=true every
# property test replays the same examples; locally they stay random and keep exploring.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
DATA = FIXTURES / "data"
PIPELINES = FIXTURES / "pipelines"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir() -> Path:
    from loradoctor import assets
    return assets.qwen3_tokenizer_dir()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from loradoctor import assets
    return assets.smollm2_dir()


@pytest.fixture(scope="session")
def tiny_qwen3_dir() -> Path:
    from loradoctor import assets
    return assets.tiny_qwen3_dir()


@pytest.fixture(scope="session")
def tiny_llama_dir() -> Path:
    from loradoctor import assets
    return assets.tiny_llama_dir()


@pytest.fixture(scope="session")
def qwen3_tokenizer(qwen3_tokenizer_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(qwen3_tokenizer_dir)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture
def cli(capsys):
    """Run the real CLI in-process: `cli("check-dataset", path, "--tokenizer", tok)`."""
    from loradoctor.cli import main

    def run(*args) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)
    return run


@pytest.fixture
def cli_subprocess():
    """Run `python -m loradoctor ...` as a user would, in a separate process."""
    def run(*args, timeout: int = 300) -> CliResult:
        env = {**os.environ, "COLUMNS": "120"}
        proc = subprocess.run([sys.executable, "-m", "loradoctor", *map(str, args)],
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)
    return run
