"""init rules (stub: filled in by its issue)."""

RULES = []
