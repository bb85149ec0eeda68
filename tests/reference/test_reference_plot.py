"""`loradoctor reference [NAME] --plot DIR`: one PNG per reference run, checked as an image.

Every run's picture is rendered from its recorded outcome (fixtures/reference/outcomes.json,
from a real `loradoctor reference --json`), so the test covers each run without minutes of
training; one run (init, the quickest) goes through the real CLI end to end. An image counts as
drawn when it decodes, has the expected size, is mostly but not only white, and shows the
warm colour of a marked step where the run has one.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loradoctor.reference import RunOutcome, all_runs

from ..conftest import FIXTURES, ROOT

RECORDED = {r["name"]: r for r in json.loads(
    (FIXTURES / "reference" / "outcomes.json").read_text(encoding="utf-8"))["runs"]}


def outcome(name: str) -> RunOutcome:
    r = RECORDED[name]
    return RunOutcome(r["curves"], r["flagged"], r["verdict"], r["reproduced"],
                      {k: tuple(v) for k, v in r["marks"].items()})


def assert_drawn_png(path, marked: bool) -> None:
    np = pytest.importorskip("numpy")
    from matplotlib import image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(path)[..., :3]  # (H, W, 3) floats in [0, 1]
    height, width, _ = pixels.shape
    assert width >= 900 and height >= 480
    ink = (pixels < 0.9).any(axis=-1).mean()
    assert 0.02 < ink < 0.6, ink  # drawn on, not blank and not a solid block
    colours = {tuple(p) for p in (pixels[::4, ::4] * 255).astype(int).reshape(-1, 3)}
    assert len(colours) > 20
    red = ((pixels[..., 0] > 0.75) & (pixels[..., 1] < 0.3) & (pixels[..., 2] < 0.3)).sum()
    orange = ((pixels[..., 0] > 0.9) & (np.abs(pixels[..., 1] - 0.5) < 0.08)
              & (pixels[..., 2] < 0.2)).sum()
    assert (red + orange > 50) == marked, (red, orange)


def test_every_reference_run_has_a_recorded_outcome():
    assert sorted(RECORDED) == sorted(r.name for r in all_runs()), \
        "record the new run in fixtures/reference/outcomes.json (see its note)"


@pytest.mark.parametrize("run", all_runs(), ids=lambda r: r.name)
def test_each_runs_plot_renders_as_a_real_image(run, tmp_path):
    from loradoctor.reference.plot import plot_run, wrong_steps

    result = outcome(run.name)
    path = plot_run(run.name, run.title, result, tmp_path / "plots" / f"{run.name}.png")
    assert path == tmp_path / "plots" / f"{run.name}.png"
    assert_drawn_png(path, marked=bool(wrong_steps(result)))


def test_the_step_where_each_pipeline_went_wrong_is_found():
    from loradoctor.reference.plot import wrong_steps

    assert wrong_steps(outcome("masking")) == {"buggy LoRADataset": (0, "loss nan from step 1")}
    closure = wrong_steps(outcome("closure"))
    assert closure["closure bug"][0] == 0 and "crashed at step 0" in closure["closure bug"][1]
    assert closure["closure bug, q/o only"][1].startswith("garbage from the start")
    assert set(closure) == {"closure bug", "closure bug, q/o only"}
    init = wrong_steps(outcome("init"))
    assert init["A zeroed, B zero"] == (0, "flat: the loss never moves")
    assert init["B random"][1].startswith("damaged start")
    watchdog = wrong_steps(outcome("watchdog"))
    assert watchdog["Trainer log, no callback"] == (4, "logged as 0 from step 5")
    assert watchdog["model loss, no callback"] == (4, "loss nan from step 5")
    assert wrong_steps(outcome("ddp-adapter")) == {}


@pytest.mark.slow  # a reference run: real training steps
def test_reference_plot_writes_the_png_through_the_cli(cli, tmp_path):
    result = cli("reference", "init", "--plot", tmp_path / "figures", "--json")
    assert result.code == 0, result.err
    (run,) = json.loads(result.out)["runs"]
    assert run["plot"] == str(tmp_path / "figures" / "init.png")
    assert run["marks"]["B random"][0] == 0
    assert_drawn_png(tmp_path / "figures" / "init.png", marked=True)


@pytest.mark.slow  # a separate process: loradoctor's CLI imported
def test_without_matplotlib_plot_is_one_line_and_exit_2_before_any_training(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None; "
            "from loradoctor.cli import main; "
            f"sys.exit(main(['reference', 'init', '--plot', {str(tmp_path)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("loradoctor: error: --plot needs matplotlib: pip install "
                                   "'loradoctor[plot]'")
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []
