"""One module per family of rules. Each module exposes `RULES`, an explicit list of `Rule`s."""
