# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and installs what changed (a stamp keyed on
# pyproject.toml keeps the second run quick), then runs.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
DEVICES ?= 100

.PHONY: demo test unit integration lint typecheck e2e bench compile-pipeline clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,tvm]'
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(BIN)/tinymlops demo --devices $(DEVICES) --report demo-report.json

test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest -q

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest -q -m integration tests/integration

lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy tinymlops

e2e: $(STAMP)
	$(BIN)/python -m pytest -q tests/e2e --with-e2e

bench: $(STAMP)
	$(BIN)/python benchmarks/variants.py

compile-pipeline: $(STAMP)
	$(BIN)/python -m tinymlops_pipelines.compile

clean:
	rm -rf $(VENV) .tinymlops demo-report.json .pytest_cache .mypy_cache .ruff_cache
