# The README's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= ../shared

.PHONY: run test lint typecheck unit bench load score clean compile pure metamorphic audit

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Stamp files so that a change to pyproject.toml reinstalls.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[compile]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,compile]'
	touch $@ $(VENV)/.installed

# The triage engine is compiled in place with mypyc (about 1.6x faster; the .py files stay
# the source of truth and are rebuilt into .so files whenever they change). `make pure`
# removes the compiled modules, and Python then runs the .py files.
COMPILED := triage/normalize.py triage/tokens.py triage/engine.py triage/types.py triage/ruleset.py
triage/.compiled: $(COMPILED) triage/_build.py $(VENV)/.installed
	mkdir -p build-mypyc
	$(BIN)/python triage/_build.py > build-mypyc/build.log 2>&1 || (cat build-mypyc/build.log; exit 1)
	touch $@

compile: triage/.compiled

pure:
	rm -f triage/*.so triage/.compiled
	rm -rf build-mypyc

run: $(VENV)/.installed triage/.compiled
	TSUNAGI_LOG_FORMAT=$${TSUNAGI_LOG_FORMAT:-text} $(BIN)/tsunagi serve --host 127.0.0.1 --port 8000

# lint-imports: the layers of docs/architecture.md (contracts in pyproject.toml, [tool.importlinter]).
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

# The browser tests drive Debian's Chromium through Playwright (never `playwright install`).
# Japanese fonts so that pages and screenshots render the text.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
$(CHROMIUM):
	$(SUDO) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends chromium fonts-noto-cjk

# Debian's Caddy runs deploy/Caddyfile in front of a real server in tests/test_deploy.py.
CADDY := /usr/bin/caddy
$(CADDY):
	$(SUDO) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends caddy

# tests/test_faults.py runs a redis-server of its own (killed, restarted empty, flushed): Debian's.
REDIS_SERVER := /usr/bin/redis-server
$(REDIS_SERVER):
	$(SUDO) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends redis-server

unit: $(VENV)/.installed-dev triage/.compiled | $(CHROMIUM) $(CADDY) $(REDIS_SERVER)
	$(BIN)/pytest -q

test: lint typecheck unit

bench: $(VENV)/.installed triage/.compiled
	$(BIN)/python -m triage.bench

# The server under load against a bare FastAPI endpoint (tests/load/; the README's "Load"): needs PostgreSQL
# and Redis as the tests do. LOAD_ARGS passes options, e.g. LOAD_ARGS='--rates 50,100 --seconds 20' or --quick.
load: $(VENV)/.installed-dev triage/.compiled
	$(BIN)/python -m tests.load $(LOAD_ARGS)

# Risk kept under other spellings (tests/transforms.py), per transformation; a measurement, exits 0.
metamorphic: $(VENV)/.installed-dev triage/.compiled
	TSUNAGI_SHARED=$(abspath $(SHARED)) $(BIN)/python -m tests.metamorphic_report

# Score the development set with the shared scorer.
score: $(VENV)/.installed triage/.compiled
	mkdir -p var
	$(BIN)/tsunagi triage < $(SHARED)/triage/dev.jsonl > var/dev.predicted.jsonl
	$(PYTHON) $(SHARED)/triage/score.py $(SHARED)/triage/dev.jsonl var/dev.predicted.jsonl

clean: pure
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build-mypyc

# Known vulnerabilities in what .venv holds (the dependencies as pyproject.toml's ranges resolved; there is no
# lock file), with pip-audit from the `audit` extra. It asks PyPI's vulnerability data over the internet, so
# it is not part of `make test`; offline it stops with a connection error and exits 1.
$(VENV)/.installed-audit: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[audit]'
	touch $@

audit: $(VENV)/.installed-audit
	$(BIN)/pip-audit --skip-editable --progress-spinner off
