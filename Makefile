# Two commands for people: `make demo` and `make test`. Each sets itself up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
AZURITE := node_modules/.bin/azurite

.PHONY: demo test bench lint setup clean

setup: $(STAMP) $(AZURITE)

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12) and "Python 3.11 or 3.12 is required (azure-functions 1.x supports < 3.13)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

$(AZURITE): package.json
	npm install --no-audit --no-fund --loglevel=error
	@touch $@

demo: setup
	$(PY) -m pipeline demo

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest

bench: setup
	$(PY) bench/run.py

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) node_modules out .pytest_cache .ruff_cache .hypothesis
