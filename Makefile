# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and installs what changed (a stamp keyed on
# pyproject.toml keeps the second run quick), then runs.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
DEVICES ?= 100

.PHONY: demo test unit integration lint typecheck e2e bench compile-pipeline clean prometheus

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,tvm]'
	rm -f $(VENV)/.installed-* && touch $@

# The local stack runs a real Prometheus (rollout analysis queries it) and refuses to start
# without one. Debian packages it, so install it where we can (root with apt-get); elsewhere
# say how, rather than let the demo or the tests fail later on a missing binary.
prometheus:
	@if [ -x "$${TINYMLOPS_PROMETHEUS_BIN:-}" ] || command -v prometheus >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's prometheus package (the local stack runs it)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq prometheus >/dev/null 2>&1 \
	    || { apt-get update -qq && apt-get install -y -qq prometheus >/dev/null; }; \
	  command -v prometheus >/dev/null 2>&1 || { echo "prometheus installed but not on PATH" >&2; exit 1; }; \
	else \
	  echo "prometheus is not installed: run 'sudo apt-get install prometheus'" \
	       "or set TINYMLOPS_PROMETHEUS_BIN to a prometheus binary" >&2; \
	  exit 1; \
	fi

demo: $(STAMP) prometheus
	$(BIN)/tinymlops demo --devices $(DEVICES) --report demo-report.json

test: $(STAMP) prometheus lint typecheck
	$(BIN)/python -m pytest -q

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP) prometheus
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
