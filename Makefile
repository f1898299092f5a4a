# Entry points of the suite. `make install` once (or let any target do it), then:
#   make test     ruff + the default test suite (what CI runs)
#   make bench    env-steps/s of the classic tasks and the V-learner's overhead
#   make train    one PQL run on classic/pendulum (ARGS="KEY=VALUE ..." to change it)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: install test test-all bench train lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

lint: install
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest

test-all: lint
	$(PY) -m pytest -m ""

bench: install
	$(PY) -m pql.bench

train: install
	$(VENV)/bin/pql train task=classic/pendulum $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .tox
