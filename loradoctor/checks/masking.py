"""masking rules (stub: filled in by its issue)."""

RULES = []
