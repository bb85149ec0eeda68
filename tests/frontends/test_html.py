"""`--html PATH`: the whole report as one self-contained page, rendered by a real browser.

The page is checked twice: as text (nothing fetched, every finding, fix, token, table and curve
in it) and in headless Chromium, which renders it to a PNG whose pixels must hold the token
view's colours (trained, masked, should be trained but masked) in token-sized amounts, not only
in the legend. CI installs Chromium (`.ci/run`); without it these tests fail, saying how to
install it, unless LORADOCTOR_NO_BROWSER=1 says this machine has no browser on purpose.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from loradoctor.findings import Curve, Report
from loradoctor.reference import all_runs
from loradoctor.reference.runner import reference_report
from loradoctor.render_html import TOKEN_COLOURS, html_page

from ..conftest import DATA, MASKING, PIPELINES
from ..reference.test_reference_plot import RECORDED, outcome

BUGGY = f"{PIPELINES / 'minimind_dataset.py'}:LoRADataset"
# Anything that would make a browser fetch: scripts, styles, images, fonts, frames, imports.
FETCHES = re.compile(r"<script|<link|<img|<iframe|<object|<embed|\bsrc=|url\(|@import|"
                     r"https?://(?!www\.w3\.org/2000/svg\")", re.IGNORECASE)


def assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not FETCHES.findall(page), FETCHES.findall(page)


def test_check_dataset_writes_the_page_beside_its_annotations(cli, qwen3_tokenizer_dir, tmp_path):
    page_path = tmp_path / "report.html"
    result = cli("check-dataset", DATA / "persona.jsonl", "--tokenizer", qwen3_tokenizer_dir,
                 "--dataset", BUGGY, "--format", "github", "--html", page_path)
    assert result.code == 1
    assert all(line.startswith("::error ") for line in result.out.splitlines())  # stdout: those
    assert f"HTML report written to {page_path}" in result.err
    page = page_path.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "2 errors" in page and "exit 1" in page
    for text in ("LD101 no-supervised-tokens", "LD102 marker-from-missing-special-token",
                 "fix:</b> build the marker from the template&#x27;s text",
                 "minimind_dataset.py:25", "24 of 24 samples supervise no prompt token"):
        assert text in page, text
    views = re.findall(r'<figure class="tokenview">', page)
    assert len(views) == 3  # the doctor view's three token views
    assert page.count('class="tok missed"') > 30 and 'class="tok masked"' in page
    assert '<span class="tok missed" title="missed">Pip</span>' not in page  # a space kept:
    assert '<span class="tok missed" title="missed"> Pip</span>' in page


def test_a_path_in_a_missing_folder_is_an_input_error_before_the_run(cli, tmp_path):
    result = cli("check-dataset", DATA / "persona.jsonl", "--tokenizer", tmp_path,
                 "--html", tmp_path / "no" / "report.html")
    assert result.code == 2 and result.out == ""
    assert result.err.strip() == (f"loradoctor: error: --html {tmp_path / 'no' / 'report.html'}:"
                                  f" folder {tmp_path / 'no'} does not exist")


def test_the_reference_runs_page_draws_every_runs_curves_as_inline_svg():
    runs = [(run, outcome(run.name), 1.0) for run in all_runs()]
    page = html_page(reference_report(runs), title="loradoctor reference runs",
                     version="0", exit_code=0)
    assert_self_contained(page)
    assert page.count("<svg ") == len(runs)
    for run in all_runs():
        assert f"<td>{run.name}</td>" in page
        for pipeline, codes in RECORDED[run.name]["flagged"].items():
            assert f"<td>{pipeline}</td><td>{', '.join(codes) or 'nothing (clean)'}</td>" in page
    assert page.count("<polyline ") > len(runs)  # lines, a pipeline's each
    # fp16-overflow's buggy pipeline goes NaN: its steps are crosses, not a line to nowhere
    assert "step 2: nan" in page or "step 1: nan" in page


def test_a_curve_of_nan_only_and_a_single_point_still_draw():
    page = html_page(Report("reference", views=[Curve("odd", {"nan": [float("nan")] * 3,
                                                              "one": [2.0]})]),
                     title="t", version="0")
    assert page.count("<path ") == 3 and "<circle " in page


# --- in a real browser -----------------------------------------------------------------------


def _browser() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("LORADOCTOR_NO_BROWSER") == "1":
            pytest.skip("LORADOCTOR_NO_BROWSER=1: no browser on this machine")
        pytest.fail("headless Chromium is needed to render the HTML report: apt-get install -y "
                    "chromium (CI's .ci/run installs it), or LORADOCTOR_NO_BROWSER=1 to skip")
    return exe


def render(page_path, out_dir, size=(1200, 2600)) -> tuple:
    """Chromium renders the page to a PNG; returns (pixels as an (H, W, 3) uint8 array, DOM)."""
    np = pytest.importorskip("numpy")
    from PIL import Image

    common = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
              "--no-first-run", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", f"--user-data-dir={out_dir / 'profile'}"]
    png = out_dir / "page.png"
    shot = subprocess.run([*common, f"--screenshot={png}", f"--window-size={size[0]},{size[1]}",
                           page_path.as_uri()], capture_output=True, text=True, timeout=180,
                          check=False)
    assert shot.returncode == 0 and png.is_file(), shot.stderr[-2000:]
    assert "Failed to load resource" not in shot.stderr and "net::ERR" not in shot.stderr
    dom = subprocess.run([*common, "--dump-dom", page_path.as_uri()], capture_output=True,
                         text=True, timeout=180, check=False)
    assert dom.returncode == 0, dom.stderr[-2000:]
    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert pixels.shape == (size[1], size[0], 3)
    return pixels, dom.stdout


def colour_area(pixels, hex_colour: str) -> int:
    """Pixels of exactly this colour (±2 per channel, for the encoder's rounding)."""
    import numpy as np
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels.astype(int) - rgb) <= 2).all(axis=-1).sum())


@pytest.mark.slow  # a browser start and a check-dataset run
def test_chromium_renders_the_token_views_colours(cli, qwen3_tokenizer_dir, tmp_path):
    # LD105's fixture: replies trained, prompts masked, each <|im_end|> masked where it
    # should be trained: three of the four classes, in one token view.
    page_path = tmp_path / "ld105.html"
    result = cli("check-dataset", MASKING / "multiturn.jsonl", "--tokenizer",
                 qwen3_tokenizer_dir, "--dataset", f"{MASKING / 'ld105.py'}:bad", "--show", "1",
                 "--html", page_path)
    assert result.code == 1 and "LD105" in result.out
    pixels, dom = render(page_path, tmp_path)
    assert dom.count('class="tok trained"') > 20 and 'class="tok missed"' in dom
    area = {kind: colour_area(pixels, bg) for kind, (bg, _) in TOKEN_COLOURS.items()}
    # No token is trained where it should be masked: that colour is the legend's label alone,
    # the measure of what a class shows in the legend (about 2,500 pixels).
    legend_only = area["extra"]
    assert 0 < legend_only < 4000, area
    assert area["trained"] > 6 * legend_only, area  # dozens of trained tokens
    assert area["masked"] > 4 * legend_only, area  # the prompts
    assert area["missed"] > 1.5 * legend_only, area  # the legend and two <|im_end|> tokens
    ink = (pixels < 200).any(axis=-1).mean()
    assert 0.02 < ink < 0.5, ink  # text drawn: not a blank or broken page


@pytest.mark.slow
def test_chromium_draws_the_reference_curves(tmp_path):
    runs = [(run, outcome(run.name), 1.0) for run in all_runs() if run.name == "fp16-overflow"]
    page_path = tmp_path / "reference.html"
    page_path.write_text(html_page(reference_report(runs), title="reference", version="0"),
                         encoding="utf-8")
    pixels, dom = render(page_path, tmp_path, size=(1000, 1200))
    assert "<polyline" in dom
    from loradoctor.render_svg import PALETTE
    assert colour_area(pixels, PALETTE[1]) > 200  # the fixed pipeline's line
    assert colour_area(pixels, PALETTE[0]) > 50  # the buggy one's, and its NaN crosses


@pytest.mark.slow  # a real reference run (a few training steps)
def test_reference_html_through_the_cli(cli, tmp_path):
    result = cli("reference", "init", "--html", tmp_path / "ref.html", "--json")
    assert result.code == 0, result.err
    (run,) = json.loads(result.out)["runs"]  # stdout: the JSON, as without --html
    page = (tmp_path / "ref.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    assert page.count("<svg ") == 1 and "B random" in page and run["title"] in page


@pytest.mark.slow  # check-model on the tiny Qwen3: coverage and the dtype table
def test_check_model_page_holds_the_coverage_and_dtype_tables(cli, tiny_qwen3_dir, tmp_path):
    result = cli("check-model", "--model", tiny_qwen3_dir, "--apply",
                 f"{PIPELINES / 'minimind_lora.py'}:apply_lora_default_args", "--apply-arg",
                 "rank=8", "--apply-arg", "alpha=16", "--select", "LD210,LD300",
                 "--format", "sarif", "--html", tmp_path / "model.html")
    assert result.code == 0, result.err
    json.loads(result.out)
    page = (tmp_path / "model.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "<caption>adapter coverage" in page and "<caption>probe batch" in page
    for dtype in ("fp32", "bf16", "fp16"):
        assert f"<td>{dtype}</td>" in page
