"""Reference runs for the masking family (stub: filled in by its issue)."""

RUNS = []
