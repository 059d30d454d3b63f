# rollgraph — two commands on a fresh machine:
#   make quickstart   set up, then train the quickstart preset and print where the sample grid is
#   make test         set up, then run the test suite (what CI runs)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rollgraph-installed

.PHONY: setup quickstart test test-all bench bench-quick lint ui browser

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch first, so nothing pulls a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

quickstart: setup
	$(BIN)/rollgraph run quickstart --overwrite  # a previous runs/quickstart is moved aside, not deleted

browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Debian's chromium for the browser tests (they are skipped without it)"; fi; }

test: setup browser
	$(BIN)/pytest -q

test-all: setup browser
	$(BIN)/pytest -q -m ""

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python -m bench.run_all

bench-quick: setup
	$(BIN)/python -m bench.run_all --quick

ui: setup
	$(BIN)/rollgraph ui
