# tsad: the two commands a newcomer runs are `make demo` and `make test`.
# Both create .venv when missing and install what they need (idempotent; quick once installed).
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo test test-unit lint install prometheus bench clean

$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml requirements.lock
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

# Debian's prometheus package gives promtool and the server used by the deploy tests;
# prometheus-alertmanager the Alertmanager the alert-sink test posts to.
prometheus:
	@{ command -v promtool && command -v prometheus-alertmanager; } >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    prometheus prometheus-alertmanager >/dev/null; }
	@promtool --version 2>&1 | head -1
	@prometheus-alertmanager --version 2>&1 | head -1

demo: install
	$(BIN)/tsad demo

# The gates (configured in pyproject.toml): import-linter layer contracts, ruff lint and format, mypy.
lint: install
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint prometheus
	$(BIN)/python -m pytest -q

# The fast subset: no broker, Prometheus or Airflow (about 2 minutes on 2 cores).
test-unit: install
	$(BIN)/python -m pytest -q -m "not integration"

bench: install
	$(BIN)/python benchmarks/bench_e2e.py
	$(BIN)/python benchmarks/bench_training.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis var out
