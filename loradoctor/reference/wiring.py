"""Reference runs for the wiring family (stub: filled in by its issue)."""

RUNS = []
