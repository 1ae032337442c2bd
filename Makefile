# Two commands from a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of torch lies on this workplace's disk; elsewhere pip falls back to PyPI.
TORCH  ?= torch==2.13.0

.PHONY: demo test test-all test-ray lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Stamp files make a second install a no-op unless pyproject.toml changed.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)" || $(BIN)/pip install -q torch
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed benchmarks/requirements.txt
	$(BIN)/pip install -q --no-deps -r benchmarks/requirements.txt
	touch $@

demo: $(VENV)/.installed
	$(BIN)/ramparts audit --out runs/demo

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

test-ray: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -m ray

test-all: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -m ""

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

format: $(VENV)/.installed-dev
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/evasion_peers.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
