# The README's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= ../shared

.PHONY: run test lint typecheck unit bench score clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Stamp files so that a change to pyproject.toml reinstalls.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/tsunagi serve --host 127.0.0.1 --port 8000

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

unit: $(VENV)/.installed-dev
	$(BIN)/pytest -q

test: lint typecheck unit

bench: $(VENV)/.installed
	$(BIN)/python -m triage.bench

# Score the development set with the shared scorer.
score: $(VENV)/.installed
	$(BIN)/tsunagi triage < $(SHARED)/triage/dev.jsonl > var/dev.predicted.jsonl
	$(PYTHON) $(SHARED)/triage/score.py $(SHARED)/triage/dev.jsonl var/dev.predicted.jsonl

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
