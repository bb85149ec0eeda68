"""The Ray integration on a local Ray instance with 2 workers: shards as Ray tasks, merged.

`loradoctor.integrations.ray.check_dataset` and `python -m loradoctor.integrations.ray` must
give the report one `check-dataset` run over the whole file gives, on the same thousands of
tagged conversations and dataset class as `test_shards.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import loradoctor

from ..conftest import ROOT
from ..helpers import comparable
from .test_shards import CLASS, N_RECORDS, _kit

ray = pytest.importorskip("ray")

# Starts a Ray instance (seconds) and its worker processes; under pytest-xdist (`make test`
# runs --dist loadfile) the module's tests share one worker, and so one instance.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("ray") / "mixed.jsonl"
    return _kit().write_jsonl(path, N_RECORDS // 2, seed=5)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}})
    yield
    ray.shutdown()


def test_three_shards_as_ray_tasks_give_the_whole_runs_report(local_ray, data,
                                                              qwen3_tokenizer_dir):
    from loradoctor.integrations.ray import check_dataset

    kwargs = dict(data=data, tokenizer=qwen3_tokenizer_dir, dataset=CLASS, max_length=48)
    whole = loradoctor.check(**kwargs)
    merged = check_dataset(shards=3, **kwargs)
    assert ray.is_initialized()  # the caller's instance is left running
    version = loradoctor.__version__
    assert comparable(json.dumps(merged.to_dict(version))) == \
        comparable(json.dumps(whole.to_dict(version)))
    assert merged.exit_code == 1 and {"LD101", "LD103"} <= {f.code for f in merged.findings}


def test_an_input_error_in_a_task_is_the_runs_input_error(local_ray, qwen3_tokenizer_dir,
                                                        tmp_path):
    from loradoctor.integrations.ray import check_dataset

    with pytest.raises(loradoctor.InputError, match=r"shard \d/2: .*no such file"):
        check_dataset(shards=2, data=tmp_path / "missing.jsonl", tokenizer=qwen3_tokenizer_dir)


def test_the_one_command_runs_it_from_a_shell(data, qwen3_tokenizer_dir, cli):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local instance
    args = [str(data), "--tokenizer", str(qwen3_tokenizer_dir), "--dataset", CLASS,
            "--select", "LD100,LD101", "--json"]
    proc = subprocess.run(
        [sys.executable, "-m", "loradoctor.integrations.ray", "check-dataset", *args,
         "--shards", "2", "--cpus-per-shard", "1"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    whole = cli("check-dataset", *args)  # the plain command, in-process
    assert proc.returncode == whole.code == 1, proc.stderr[-2000:]
    assert comparable(proc.stdout) == comparable(whole.out)  # stdout: one JSON object
