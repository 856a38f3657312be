# The two commands of the README. Each creates what it needs in .venv on first use.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: run test lint clean

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

## make run ARGS="--config config.toml": start the gateway
run: $(STAMP)
	$(VENV)/bin/claude-max-api $(ARGS)

## make test: the whole test suite (what CI runs)
test: $(STAMP)
	$(VENV)/bin/ruff check gateway bridges tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway bridges tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
