# Two commands on a fresh machine: `make demo` (offline crawl of the bundled site) and
# `make test` (lint, types, test suite). Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/crawler demo

lint: $(STAMP)
	$(BIN)/ruff check crawler spiders tests benchmarks
	$(BIN)/ruff format --check crawler spiders tests

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q -n 2

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/crawler bench

clean:
	rm -rf $(VENV) *.egg-info demo.db demo.db-wal demo.db-shm
