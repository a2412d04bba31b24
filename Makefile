# `make train` and `make test` create .venv on first use and reuse it after.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help train test test-slow lint format bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

train: $(STAMP)  ## train the default job (digits); pass overrides as ARGS="experiment=mnist ..."
	$(BIN)/python trainer.py $(ARGS)

test: $(STAMP)  ## the test suite without the tests marked slow
	$(BIN)/python -m pytest -m "not slow"

test-slow: $(STAMP)  ## the tests marked slow: whole recipes, the README's longer examples, sweeps (CI runs them too)
	$(BIN)/python -m pytest -m slow

lint: $(STAMP)  ## ruff lint and format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)  ## ruff fix and format
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench: $(STAMP)  ## framework overhead against plain PyTorch, ResNet-50 throughput, linear evaluation, sweeps, the input pipeline
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/linear_eval.py
	$(BIN)/python benchmarks/sweep.py
	$(BIN)/python benchmarks/pipeline.py

clean:  ## remove the virtual environment and caches (keeps logs/ and data/)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
