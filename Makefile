# Two commands for a fresh machine: `make demo` and `make test`.
# Each creates .venv if missing and installs what it needs.
#
# TORCH_SPEC picks the torch build installed *before* the project, so that the
# project's own `torch>=...` requirement is already satisfied and pip does not
# pull a (large, CUDA) default wheel. Override it for another build, e.g.
#   make test TORCH_SPEC="torch==2.5.1" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
# Idle OpenMP threads sleep instead of spinning: on shared or busy cores spinning threads
# make small ops many times slower (see README, Performance).
export OMP_WAIT_POLICY ?= PASSIVE
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench assets lint clean install labs

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

LABS_STAMP := $(VENV)/.installed-labs
$(LABS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev,labs]"
	touch $(LABS_STAMP)

# The teaching labs: the notebooks match their sources, every check fails on the student
# version and passes on the solution, then each solution notebook runs headless.
labs: $(LABS_STAMP)
	$(PY) -m pytest -q tests/test_labs.py
	$(PY) docs/labs/build.py --execute

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

bench: $(STAMP)
	$(PY) scripts/bench.py

assets: $(STAMP)
	$(PY) scripts/build_assets.py

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
