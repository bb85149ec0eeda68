"""Every count the masking rules print is a real count, for any mix of samples.

A property test over the real pipeline: hypothesis writes a data file whose samples are a
random mix of kinds (matching the template, differing from it by augmentation, empty, fully
masked, partly supervised, supervising the prompt; see fixtures/masking/mixed_samples.py), and
every LD1xx rule runs on it through the real context, Comparer and engine with the real Qwen3
tokenizer. No summary, message or evidence may hold a negative count, and no "X of Y" may have
X above Y.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loradoctor import engine, registry
from loradoctor.context import DatasetContext

from ..conftest import FIXTURES

SPEC = f"{FIXTURES / 'masking' / 'mixed_samples.py'}:label"
KINDS = ["match", "system", "nothink", "empty", "masked", "partial", "prompt",
         "system+masked", "nothink+masked", "nothink+partial", "system+prompt"]
IGNORE_INDEX = "-100"  # the one negative number a message may name: the label value itself

WORDS = st.sampled_from(["model", "adapter", "loss", "why", "ok", "yes", "the", "layer", "42"])
TEXT = st.lists(WORDS, min_size=1, max_size=6).map(" ".join)


@st.composite
def records(draw):
    """A record of one kind: one to three user/assistant exchanges, maybe a system prompt."""
    kind = draw(st.sampled_from(KINDS))
    turns = draw(st.integers(1, 3))
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(TEXT)})
    for i in range(turns):
        user = draw(TEXT)
        messages.append({"role": "user", "content": f"[{kind}] {user}" if i == 0 else user})
        messages.append({"role": "assistant", "content": draw(TEXT)})
    return kind, {"messages": messages}


def _run(tokenizer_dir, tokenizer, rows) -> tuple:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "mix.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for _, r in rows), encoding="utf-8")
        ctx = DatasetContext(data, tokenizer_dir, SPEC, show=0)
        ctx.memo("tokenizer", lambda: tokenizer)  # loaded once per session, not per example
        ctx.validate_inputs()
        report = engine.run("check-dataset", registry.rules_for("dataset"), ctx)
    return report


def _numbers(text: str) -> list[str]:
    return re.findall(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?!\w)", text)


def _fractions(text: str) -> list[tuple[int, int]]:
    """Every "X of Y" and "X of the Y" with whole numbers, e.g. "3 of 12 samples"."""
    pairs = re.findall(r"(?<![\w.\-])(\d[\d,]*) of (?:the )?(-?\d[\d,]*)(?![\w.%])", text)
    return [(int(a.replace(",", "")), int(b.replace(",", ""))) for a, b in pairs]


def _evidence_counts(value, path="evidence"):
    """(path, int) for every integer in an evidence tree (token ids and counts alike)."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _evidence_counts(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _evidence_counts(v, f"{path}[]")


def impossible_counts(report) -> list[str]:
    """Every negative count and every numerator above its denominator in a report's texts."""
    problems = []
    texts = [(r.code + " summary", r.summary or "") for r in report.results]
    texts += [(f.code + " message", f.message) for r in report.results for f in r.findings]
    for where, text in texts:
        for n in _numbers(text):
            if n.startswith("-") and n != IGNORE_INDEX:
                problems.append(f"{where}: negative {n} in {text!r}")
        for a, b in _fractions(text):
            if b < 0 or a > b:
                problems.append(f"{where}: {a} of {b} in {text!r}")
    for r in report.results:
        for f in r.findings:
            for path, v in _evidence_counts(f.evidence):
                if v < 0 and v != int(IGNORE_INDEX):
                    problems.append(f"{f.code} {path} = {v}")
    return problems


@pytest.fixture(scope="module")
def qwen3(qwen3_tokenizer_dir, qwen3_tokenizer):
    return qwen3_tokenizer_dir, qwen3_tokenizer


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(records(), min_size=1, max_size=10))
def test_no_masking_rule_prints_a_negative_or_impossible_count(qwen3, rows):
    report = _run(*qwen3, rows)
    assert not [r.code for r in report.results if r.status.value == "crash"], \
        [r.traceback for r in report.results if r.traceback]
    assert impossible_counts(report) == []
    # LD101 counts exactly the samples with no supervised token: the empty and the masked ones.
    ld101 = next(r for r in report.results if r.code == "LD101")
    without = sum("empty" in kind or "masked" in kind for kind, _ in rows)
    assert ld101.summary == (f"{len(rows) - without} of {len(rows)} samples supervise at least "
                             f"one token")


def test_the_checker_of_counts_catches_what_it_is_for():
    """The checker itself: a negative count and a numerator above its denominator are caught."""
    from loradoctor.findings import CheckResult, Report, Status
    report = Report("check-dataset")
    report.results.append(CheckResult("LD104", "x", Status.PASS, [], summary=(
        "0 of 0 assistant tokens supervised in the -34 samples that supervise anything")))
    report.results.append(CheckResult("LD103", "x", Status.PASS, [], summary=(
        "7 of 6 samples supervise no prompt token; labels are -100")))
    found = impossible_counts(report)
    assert len(found) == 2 and "negative -34" in found[0] and "7 of 6" in found[1]


def test_ld104_counts_only_the_compared_samples_that_supervise_something(qwen3):
    """The MiniMind case in small: most samples differ from the template and all are masked;
    the samples that supervise anything are counted among those compared, never negative."""
    rows = [("masked", {"messages": [{"role": "user", "content": "[masked] hi"},
                                     {"role": "assistant", "content": "ok"}]})]
    rows += [("nothink+masked", {"messages": [{"role": "user", "content": f"[nothink+masked] q{i}"},
                                              {"role": "assistant", "content": "a"}]})
             for i in range(3)]
    report = _run(*qwen3, rows)
    ld104 = next(r for r in report.results if r.code == "LD104")
    assert "in the 0 samples that supervise anything" in ld104.summary
    assert impossible_counts(report) == []
