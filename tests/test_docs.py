"""docs/rules.md is generated from the rule docstrings; this fails when it is stale."""

from __future__ import annotations

from loradoctor.registry import ALL_RULES
from loradoctor.ruledocs import render_markdown

from .conftest import ROOT


def test_docs_rules_md_is_up_to_date():
    on_disk = (ROOT / "docs" / "rules.md").read_text(encoding="utf-8")
    assert on_disk == render_markdown(), "docs/rules.md is stale: run `make docs`"


def test_every_rule_appears_in_the_reference():
    text = render_markdown()
    for r in ALL_RULES:
        assert f"### {r.code} {r.name}" in text
