# Entry points of the suite. `make install` once (or let any target do it), then:
#   make test     ruff + the default test suite (what CI runs), in TEST_JOBS parallel test processes (2)
#   make bench    env-steps/s, the V-learner's overhead, sync vs async (ARGS="--help" for more)
#   make train    one PQL run on classic/pendulum (ARGS="KEY=VALUE ..." to change it)
#   make ablate-envs (noise, batch, ratios, buffer, gpus, preact), make compare: a study, PROFILE=quick LAUNCHER=local,
#                 then its figures and report under plots/<study>/
#   make figures  figures and reports of every study with results
#   make gpu-check  one table of what the GPU path does here (ARGS="--device cpu --quick" on a CPU); on a GPU
#                 machine without network or venv: make gpu-check PY=python3 NO_INSTALL=1 (README: GPU check)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
TEST_JOBS ?= 2
# each test file's tests in one test process, the longest files first (pyproject.toml's addopts)
PYTEST := $(PY) -m pytest -n $(TEST_JOBS)
PROFILE ?= quick
LAUNCHER ?= local
STUDIES := envs noise batch ratios buffer gpus preact

.PHONY: install test test-all bench gpu-check train lint clean compare figures $(addprefix ablate-,$(STUDIES))

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

lint: install
	$(PY) -m ruff check .

test: lint
	$(PYTEST)

test-all: lint
	$(PYTEST)
	$(PY) -m pytest -m "slow or gpu"

bench: install
	$(PY) -m pql.bench $(ARGS)

gpu-check: $(if $(NO_INSTALL),,install)
	$(PY) -m pql.bench.gpu_check $(ARGS)

train: install
	$(VENV)/bin/pql train task=classic/pendulum $(ARGS)

$(addprefix ablate-,$(STUDIES)): ablate-%: install
	$(VENV)/bin/pql ablate ablations/$*.yaml --profile $(PROFILE) --launcher $(LAUNCHER) $(ARGS)
	$(VENV)/bin/pql report ablations/$*.yaml --profile $(PROFILE) $(ARGS)

compare: install
	$(VENV)/bin/pql ablate ablations/algorithms.yaml --profile $(PROFILE) --launcher $(LAUNCHER) $(ARGS)
	$(VENV)/bin/pql report ablations/algorithms.yaml --profile $(PROFILE) $(ARGS)

# Figures and reports of every study that has results (a study without any is named and skipped).
figures: install
	@for spec in ablations/*.yaml; do $(VENV)/bin/pql report $$spec --profile $(PROFILE) || true; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .tox
