# Two commands on a fresh machine: `make demo` (offline crawl of the bundled site) and
# `make test` (lint, types, test suite). Both create .venv and install what they need;
# `make test` also installs Debian's PostgreSQL server where it is missing (the suite starts
# its own server from those binaries: tests/pgserver.py).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install postgresql demo test lint typecheck pytest browser bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian's binaries under /usr/lib/postgresql/N/bin (or initdb on $PATH); as root apt-get
# runs as it is, otherwise through sudo.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; }

demo: $(STAMP)
	$(BIN)/crawler demo

lint: $(STAMP)
	$(BIN)/ruff check crawler spiders tests benchmarks
	$(BIN)/ruff format --check crawler spiders tests

typecheck: $(STAMP)
	$(BIN)/mypy

# The dashboard's browser tests drive Debian's chromium; where it cannot be installed
# (not root, not Debian) they are skipped, and this says why in one line.
browser:
	@command -v chromium >/dev/null 2>&1 || { export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 \
	  && apt-get install -y -q chromium >/dev/null 2>&1; }; } \
	|| echo "chromium could not be installed (apt-get install -y chromium, as root): the dashboard's browser tests are skipped"

pytest: $(STAMP) postgresql browser
	$(BIN)/pytest -q -n 2

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/crawler bench

clean:
	rm -rf $(VENV) *.egg-info demo.db demo.db-wal demo.db-shm
