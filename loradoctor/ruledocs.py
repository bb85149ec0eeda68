"""Generate `docs/rules.md` from the rules' docstrings, so the reference cannot drift.

`python -m loradoctor.ruledocs > docs/rules.md` rewrites it; a test fails when it is stale.
"""

from __future__ import annotations

import re

from .registry import ALL_RULES
from .rules import FAMILIES, Rule


def _demote(doc: str) -> str:
    # Rule docstrings use `##` sections; inside the page each rule is a `###` heading.
    return re.sub(r"^## ", "#### ", doc, flags=re.M)


def render_markdown(rules: list[Rule] = ALL_RULES) -> str:
    rules = sorted(rules, key=lambda r: r.code)
    lines = ["# Rules", "",
             "Generated from the rule docstrings by `python -m loradoctor.ruledocs`; "
             "`loradoctor rules CODE` prints the same text.", "",
             "| code | name | severity | what it flags |", "| --- | --- | --- | --- |"]
    for r in rules:
        lines.append(f"| [{r.code}](#{r.code.lower()}-{r.name}) | `{r.name}` | "
                     f"{r.severity.value} | {r.one_line} |")
    family = None
    for r in rules:
        if r.family != family:
            family = r.family
            lines += ["", f"## {family}xx: {FAMILIES.get(family, '')}"]
        body = r.doc.split("\n", 1)
        lines += ["", f"### {r.code} {r.name}", "", body[0]]
        if len(body) > 1:
            lines += [_demote(body[1]).rstrip()]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    import sys
    sys.stdout.write(render_markdown())
