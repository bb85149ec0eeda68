"""docs/ci-workflow.yml, run here: its `run:` commands in a project laid out as the workflow
expects (the MiniMind-style dataset class, persona.jsonl, the real Qwen3 tokenizer), by bash as
GitHub runs them, with the CI's environment. Each output the workflow uploads must exist and
say what it should: JUnit XML with a testcase per rule, annotations naming the data lines and
line 25 of the user's code, a SARIF log valid against the schema, a self-contained HTML page.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ..conftest import DATA, PIPELINES, ROOT
from .test_formats import validate
from .test_html import assert_self_contained

yaml = pytest.importorskip("yaml")
pytestmark = pytest.mark.slow  # pytest and loradoctor in processes of their own

WORKFLOW = ROOT / "docs" / "ci-workflow.yml"
PYPROJECT = """\
[tool.loradoctor]
data = "data/persona.jsonl"
tokenizer = "models/qwen3-tokenizer"
dataset = "minimind_dataset.py:LoRADataset"
"""


@pytest.fixture
def project(tmp_path, qwen3_tokenizer_dir) -> Path:
    """A repository as the workflow's checkout holds it."""
    (tmp_path / "data").mkdir()
    shutil.copy(DATA / "persona.jsonl", tmp_path / "data" / "persona.jsonl")
    shutil.copy(PIPELINES / "minimind_dataset.py", tmp_path / "minimind_dataset.py")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "qwen3-tokenizer").symlink_to(qwen3_tokenizer_dir)
    (tmp_path / "pyproject.toml").write_text(PYPROJECT, encoding="utf-8")
    return tmp_path


def _steps():
    job = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))["jobs"]["loradoctor"]
    return job["env"], job["steps"]


def test_the_workflows_commands_run_here_and_leave_what_it_uploads(project):
    env, steps = _steps()
    shell_env = {**os.environ, **env, "GITHUB_WORKSPACE": str(project), "CI": "true",
                 "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    shell_env.pop("PYTEST_XDIST_WORKER", None)
    codes, outs = {}, {}
    for step in steps:
        command = step.get("run")
        if command is None or command.startswith("pip install"):
            continue  # GitHub's own actions, and the install this environment already has
        # GitHub's default shell for `run:` on Linux.
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c",
                               command], cwd=project, env=shell_env, capture_output=True,
                              text=True, timeout=600, check=False)
        codes[step["name"]], outs[step["name"]] = proc.returncode, proc.stdout
    junit, annotate, sarif = list(codes)
    # The pipeline is broken (LD101, LD102): the checks fail the job; SARIF's step does not.
    assert (codes[junit], codes[annotate], codes[sarif]) == (1, 1, 0), outs

    cases = ET.parse(project / "loradoctor-junit.xml").getroot().iter("testcase")
    failed = {c.get("classname") for c in cases if c.find("failure") is not None}
    assert failed == {"loradoctor.LD101", "loradoctor.LD102"}

    lines = outs[annotate].splitlines()
    assert lines[0].startswith("::error file=data/persona.jsonl,line=1,endLine=24,"
                               "title=LD101 no-supervised-tokens::")
    assert lines[1].startswith("::error file=minimind_dataset.py,line=25,"
                               "title=LD102 marker-from-missing-special-token::")

    log = json.loads((project / "loradoctor.sarif").read_text(encoding="utf-8"))
    validate(log)
    uris = [r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
            for r in log["runs"][0]["results"]]
    assert uris == ["data/persona.jsonl", "minimind_dataset.py"]
    assert_self_contained((project / "loradoctor.html").read_text(encoding="utf-8"))

    uploads = [s["with"] for s in steps if "uses" in s and "with" in s]
    sarif_upload = next(w for w in uploads if "sarif_file" in w)
    assert (project / sarif_upload["sarif_file"]).is_file()
    artifact = next(w for w in uploads if "path" in w)
    for path in artifact["path"].split():
        assert (project / path).is_file(), path
