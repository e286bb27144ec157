# The two commands (both install what they need first):
#   make run    - the nightly pipeline on the embedded default, ending with where the outputs are
#   make test   - lint, format and type checks, then the whole test suite (CI runs exactly this)
# Extras: make ui (the Airflow UI on 127.0.0.1:8080), make test-quick (skips @slow end-to-end
# tests), make lint, make clean.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install browser postgres run ui test test-quick lint clean

install: $(STAMP)

# torch first, from the CPU wheel pip finds on this machine: asked for later, as a dependency,
# an unpinned resolver would pull a multi-GB CUDA build. Everything else under the images'
# constraints (infra/docker/constraints.txt), so the tests run what the images ship.
# Re-runs only when pyproject.toml or the constraints change.
CONSTRAINTS := infra/docker/constraints.txt
$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "ICG needs Python 3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet --constraint $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

# Debian's Chromium, for the report's headless-browser test (tests/icg_core/report/test_page_browser.py).
browser:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

# Debian's PostgreSQL server binaries, for the warehouse tests (tests/postgres.py starts a server on
# 127.0.0.1 itself).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq postgresql >/dev/null; }

run: install
	bash scripts/main.sh

ui: install
	bash scripts/ui.sh

test: install browser postgres lint
	$(VENV)/bin/pytest

test-quick: install
	$(VENV)/bin/pytest -m "not slow"

# Lint, format and type checks (part of make test, so CI runs them before the tests). mypy's
# settings and the files it checks (icg_core, pipelines) are in pyproject.toml.
lint: install
	$(VENV)/bin/ruff check icg_core pipelines dags tests benchmarks scripts
	$(VENV)/bin/ruff format --check icg_core pipelines dags tests benchmarks scripts
	$(VENV)/bin/mypy

clean:
	rm -rf data .airflow .pytest_cache
