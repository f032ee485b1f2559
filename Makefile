# astroweights: `make demo` and `make test` set everything up on a fresh machine.
# The interpreter is the one .python-version names (pyenv picks it up); override with PYTHON=...
PYTHON ?= $(shell command -v python3.12 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export MPLBACKEND ?= Agg

.PHONY: install test test-fast demo lint format bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else "astroweights needs Python >= 3.12; got " + sys.version.split()[0] + " from $(PYTHON). Install 3.12 (pyenv install 3.12) or run make PYTHON=/path/to/python3.12")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

test: install  ## full suite: fast tier and the slow tier (recovery, calibration, notebooks)
	$(BIN)/python -m pytest -q

test-fast: install  ## fast tier only (no MCMC)
	$(BIN)/python -m pytest -q -m "not slow"

demo: install  ## every implemented use case at small size, results in results/demo
	$(BIN)/astroweights demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install  ## neutrino benchmark on 10^6 simulated events (several minutes)
	$(BIN)/astroweights bench neutrino

clean:
	rm -rf $(VENV) results .pytest_cache .ruff_cache *.egg-info
