"""Reference runs for the numerics family (stub: filled in by its issue)."""

RUNS = []
