"""Real Axolotl runs with loradoctor's plugin: `axolotl preprocess` and `axolotl train` on the
tiny Qwen3 and 48 local conversations (fixtures/axolotl), on CPU.

- healthy.yml trains its 3 steps, writes its adapter, and loradoctor's report is in the output
  (Axolotl only logs a plugin it cannot import and trains anyway: the exit code alone would
  not show that the plugin ran);
- broken.yml (a base model's eos, so Axolotl never supervises '<|im_end|>') is stopped before
  step 1 with LD105: no step logged, no adapter written;
- `loradoctor check-dataset --tokenized` on the folder `axolotl preprocess` prepared finds the
  same LD105, and nothing on the healthy one.

Each command runs once per session (a minute or so each); the tests read their logs.
Run by `make test-axolotl` in Axolotl's own environment; skipped where axolotl is missing.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("axolotl") is None:
    pytest.skip("axolotl is not installed (make test-axolotl)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # axolotl's launcher execs `accelerate` from the same venv
REPORT_TITLE = "loradoctor · trainer start"
AXOLOTL_LETS_IT_THROUGH = "the turn terminator won't be trained"  # its preprocess warning


def run_folder_module():
    spec = importlib.util.spec_from_file_location(
        "axolotl_run_folder", ROOT / "fixtures" / "axolotl" / "run_folder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return run_folder_module().build(tmp_path_factory.mktemp("axolotl") / "run")


def run(folder: Path, log_name: str, *command: str) -> subprocess.CompletedProcess:
    """Run a command in the run folder, offline, stdout and stderr together; keep its log."""
    env = {**os.environ,
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "AXOLOTL_DO_NOT_TRACK": "1",  # no telemetry retries against an unreachable host
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "COLUMNS": "140"}
    proc = subprocess.run(list(command), cwd=folder, env=env, check=False, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)
    (folder / f"{log_name}.log").write_text(proc.stdout)
    return proc


@pytest.fixture(scope="module")
def preprocessed(folder) -> dict:
    """`axolotl preprocess` of both YAMLs: name -> (process, the prepared dataset folder)."""
    out = {}
    for name in ("healthy", "broken"):
        proc = run(folder, f"preprocess-{name}", str(BIN / "axolotl"), "preprocess", f"{name}.yml")
        assert proc.returncode == 0, proc.stdout[-4000:]
        (info,) = (folder / "prepared" / name).glob("*/dataset_info.json")
        out[name] = (proc, info.parent)
    return out


@pytest.fixture(scope="module")
def trained(folder, preprocessed) -> dict:
    """`axolotl train` of both YAMLs (the default launcher, as a user runs it)."""
    return {name: run(folder, f"train-{name}", str(BIN / "axolotl"), "train", f"{name}.yml")
            for name in ("healthy", "broken")}


def check_dataset(folder, prepared: Path, log_name: str) -> subprocess.CompletedProcess:
    return run(folder, log_name, sys.executable, "-m", "loradoctor", "check-dataset",
               str(prepared), "--tokenized", "--tokenizer", "tokenizer")


def test_healthy_run_trains_with_the_plugins_report(folder, trained):
    proc = trained["healthy"]
    assert proc.returncode == 0, proc.stdout[-4000:]
    out = proc.stdout
    assert "Plugin loaded successfully: loradoctor.integrations.axolotl.LoraDoctorPlugin" in out
    # loradoctor_batches: 3 reached the callback: Axolotl kept the declared setting.
    assert f"{REPORT_TITLE} · check-dataset · 3 batches" in out
    assert "✓ LD105 end-of-turn-unsupervised" in out and "✓ LD201" in out
    assert re.search(r"\n1 info · \d+ checks: \d+ passed, \d+ skipped · exit 0\n", out)
    assert out.index(REPORT_TITLE) < out.index("{'loss'")
    assert out.count("{'loss'") == 3
    assert (folder / "out" / "healthy" / "adapter_model.safetensors").is_file()


def test_broken_run_is_stopped_before_step_one(folder, preprocessed, trained):
    assert AXOLOTL_LETS_IT_THROUGH in preprocessed["broken"][0].stdout
    proc = trained["broken"]
    assert proc.returncode != 0
    out = proc.stdout
    assert f"{REPORT_TITLE} · check-dataset · 3 batches" in out
    assert "✗ LD105 end-of-turn-unsupervised  0 of" in out
    assert "loradoctor.errors.UnhealthyPipeline: loradoctor found 1 error" in out
    assert "!<|im_end|>!" in out  # the token view marks the end-of-turn left out
    assert "{'loss'" not in out
    assert not (folder / "out" / "broken" / "adapter_model.safetensors").exists()


def test_check_dataset_on_the_prepared_folders(folder, preprocessed):
    broken = check_dataset(folder, preprocessed["broken"][1], "check-broken")
    assert broken.returncode == 1, broken.stdout[-4000:]
    assert "✗ LD105 end-of-turn-unsupervised  0 of 64 end-of-turn tokens" in broken.stdout
    healthy = check_dataset(folder, preprocessed["healthy"][1], "check-healthy")
    assert healthy.returncode == 0, healthy.stdout[-4000:]
    assert "✓ LD105 end-of-turn-unsupervised  64 of 64" in healthy.stdout
