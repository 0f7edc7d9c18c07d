# Quick start: `make run` serves lrtune at http://127.0.0.1:8000; `make test` runs the whole suite
# (lint first); `make test-fast` runs the unit tier alone, on SQLite.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 8000

# Two test processes, each with its own local Ray; worksteal evens out the Ray tests' lengths.
PARALLEL    := -n 2 --dist worksteal
# The unit tier (no Ray, no browser, no cluster, nothing slow: see tests/conftest.py), SQLite half.
UNIT_TIER   := unit and not postgres

.PHONY: run test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first: the pinned CPU build comes from a local wheel, not several GB of CUDA packages
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/lrtune serve --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(VENV)/bin/ruff check service workers schemas client integrations tests bench migrations
	$(VENV)/bin/ruff format --check service workers schemas client integrations tests bench migrations
	$(VENV)/bin/mypy service workers schemas client integrations

test: lint
	$(VENV)/bin/pytest $(PARALLEL) $(PYTEST_ARGS)

test-fast: $(STAMP)
	LRTUNE_TEST_POSTGRES_URL= $(VENV)/bin/pytest $(PARALLEL) -m "$(UNIT_TIER)" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/bench_schedules.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
