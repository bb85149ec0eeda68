"""Several processes: every rank reaches one verdict at the same step, rank 0 prints it.

The jobs run as users run them: `torchrun --nproc_per_node 2`, DDP on gloo, on the CPU
(`fixtures/distributed/ddp_train.py`), one rank's data broken or one rank's loss made NaN;
in the same launch, the watchdog's gradient norm over FSDP2's shards.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from loradoctor import distributed
from loradoctor.findings import CheckResult, Finding, Report, Severity, Status

from ..conftest import FIXTURES, ROOT

SCRIPT = FIXTURES / "distributed" / "ddp_train.py"


def _torchrun(*args, timeout: int = 600) -> tuple[int, str, str, dict[str, str]]:
    """Run the script on 2 processes: (exit code, stdout, stderr, each rank's ending line of
    each job by the name of its file, `rank<r>-<job>`).

    Each rank writes its ending lines to files of its own (`LD_RANK_LINES`): the two processes
    share one stdout, where one rank's line can land in the middle of the other's."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    with tempfile.TemporaryDirectory() as lines:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
               "LD_RANK_LINES": lines}
        proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2",
                               str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=ROOT)
        ranks = {f.stem: f.read_text() for f in Path(lines).glob("rank*.txt")}
    return proc.returncode, proc.stdout, proc.stderr, ranks


@pytest.fixture(scope="module")
def ddp_jobs(qwen3_tokenizer_dir, tiny_qwen3_dir,
             tiny_llama_dir) -> dict[str, tuple[str, dict[int, str]]]:
    """Each job's output (its part of stdout, then of stderr) and its ranks' ending lines.

    The jobs run one after the other in one torchrun launch (`ddp_train.py` takes several):
    the launch and each rank's imports of Trainer and PEFT are paid once, not once per job."""
    jobs = {"broken data": ("trainer", 1), "healthy": ("trainer", -1),
            "nan": ("loop", "nan:1:2"), "fsdp2": ("fsdp-norm", tiny_llama_dir)}
    code, out, err, ranks = _torchrun(qwen3_tokenizer_dir, tiny_qwen3_dir,
                                      *[arg for job in jobs.values() for arg in job])
    assert code != 0, (out + err)[-3000:]  # jobs stopped: the script exits 3, torchrun 1
    return {name: (_part(out, job) + _part(err, job),
                   {r: ranks.get(f"rank{r}-{job}") for r in (0, 1)})
            for job, name in enumerate(jobs)}


def _part(stream: str, job: int) -> str:
    """Job `job`'s part of one stream: from its `=== job` marker to the next."""
    marker = f"=== job {job}\n"
    assert marker in stream, stream[-3000:]
    return stream.split(marker, 1)[1].split("=== job ", 1)[0]


@pytest.mark.slow
def test_one_ranks_broken_data_stops_every_rank_before_any_step(ddp_jobs):
    out, ranks = ddp_jobs["broken data"]
    assert ranks == {0: "UnhealthyPipeline ['LD101'] ranks [1] step None",
                     1: "UnhealthyPipeline ['LD101'] ranks [1] step None"}, out[-3000:]
    assert "Connection closed by peer" not in out and ": trained" not in out
    # One report, printed once (by rank 0), naming the rank whose rows failed.
    assert out.count("loradoctor · trainer start") == 1
    assert "error   LD101 rank 1: batch 0 row 0" in out
    assert "· 2 ranks" in out


@pytest.mark.slow
def test_a_healthy_job_on_two_ranks_trains_with_no_stop(ddp_jobs):
    out, ranks = ddp_jobs["healthy"]
    assert ranks == {0: "trained 3 steps", 1: "trained 3 steps"}, out[-3000:]
    assert "Traceback" not in out


@pytest.mark.slow
def test_the_watchdog_stops_every_rank_at_the_step_one_rank_went_nan(ddp_jobs):
    out, ranks = ddp_jobs["nan"]
    assert ranks == {0: "UnhealthyPipeline ['LD420'] ranks None step 2",
                     1: "UnhealthyPipeline ['LD420'] ranks None step 2"}, out[-3000:]
    assert "Connection closed by peer" not in out


@pytest.mark.slow
def test_under_fsdp2_the_gradient_norm_is_the_norm_of_the_whole_sharded_gradient(ddp_jobs):
    out, ranks = ddp_jobs["fsdp2"]
    for rank in (0, 1):
        assert ranks[rank], out[-3000:]
        sharded, full, dtensors = re.match(r"sharded (\S+) full (\S+) dtensor_grads (\d+)",
                                           ranks[rank]).groups()
        assert int(dtensors) > 0  # the gradients really are shards
        assert float(sharded) == pytest.approx(float(full), rel=1e-5)


@pytest.mark.slow
def test_under_deepspeed_zero3_the_gradient_norm_is_read_through_deepspeed(tiny_llama_dir):
    pytest.importorskip("deepspeed")
    import socket
    with socket.socket() as s:  # a free port for the one-process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "MASTER_PORT": str(port)}
    proc = subprocess.run([sys.executable, str(FIXTURES / "distributed" / "zero3_norm.py"),
                           str(tiny_llama_dir)], capture_output=True, text=True, timeout=600,
                          env=env, cwd=ROOT)
    line = re.search(r"^ZERO3 grads_none (\d+) watchdog (\S+) reference (\S+)$", proc.stdout,
                     re.M)
    assert line, proc.stdout[-2000:] + proc.stderr[-3000:]
    none, norm, full = line.groups()
    assert int(none) > 0  # `.grad` really is None under ZeRO-3
    assert float(norm) == pytest.approx(float(full), rel=1e-5)


# --- joining the ranks' reports (no processes needed) -------------------------------------


def _report(status: Status, summary: str, *findings: Finding) -> Report:
    return Report("check-dataset", [CheckResult("LD101", "no-supervised-tokens", status,
                                                list(findings), summary=summary)])


def test_joined_reports_name_the_failing_rank_and_keep_one_result_per_rule():
    bad = Finding("LD101", "no-supervised-tokens", Severity.ERROR, "4 of 4 samples ...",
                  location="batch 0 row 0")
    merged = distributed.merged([(_report(Status.PASS, "4 of 4 supervise"), None),
                                 (_report(Status.FAIL, "0 of 4 supervise", bad), None)],
                                "check-dataset")
    (result,) = merged.results
    assert result.status is Status.FAIL
    assert result.summary == "rank 1: 0 of 4 supervise (rank 0 passes)"
    (finding,) = merged.findings
    assert finding.location == "rank 1: batch 0 row 0"
    assert finding.message == "rank 1: 4 of 4 samples ..."
    assert finding.evidence["rank"] == 1
    assert merged.summary["failed_ranks"] == [1] and not merged.ok


def test_one_process_is_left_as_it_is():
    report = _report(Status.PASS, "4 of 4 supervise")
    assert distributed.merged([(report, None)], "check-dataset") is report
    assert distributed.world() == distributed.World(0, 1)
    assert distributed.gather("x") == ["x"] and distributed.worst_severity(2) == 2
