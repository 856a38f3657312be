# The two commands of the README. Each creates what it needs in .venv on first use.
#   make run                  the gateway with what it needs to run (pip install -e .)
#   make run EXTRAS=voice     ... plus voice messages (any extra of pyproject.toml, comma-separated)
#   make test                 the whole test stack (.[test]: voice engines, torch, linters; as root also the
#                             Debian packages of scripts/system-packages.sh; the npm clients of
#                             scripts/node-tools.sh) and the suite
PYTHON ?= python3
VENV   := .venv
EXTRAS ?=

comma := ,
# One stamp per installed set of extras: it says "the venv has .[EXTRAS] for this pyproject.toml",
# so switching EXTRAS installs what the new set needs (pip never removes packages).
RUN_STAMP  := $(VENV)/.installed-$(if $(EXTRAS),$(subst $(comma),+,$(subst $() ,,$(EXTRAS))),base)
RUN_SPEC   := .$(if $(EXTRAS),[$(subst $() ,,$(EXTRAS))])
TEST_STAMP := $(VENV)/.installed-test

# Two pytest workers; each takes a whole test file (module fixtures, the modules' own coverage
# checks). PYTEST_WORKERS= runs the suite in one process.
PYTEST_WORKERS ?= -n 2 --dist loadfile

.PHONY: run test lint clean

define install
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -e '$(1)'
	@touch $@
endef

ifneq ($(RUN_STAMP),$(TEST_STAMP))
$(RUN_STAMP): pyproject.toml
	$(call install,$(RUN_SPEC))
endif

$(TEST_STAMP): pyproject.toml
	$(call install,.[test])

## make run ARGS="--config config.toml" [EXTRAS=voice]: start the gateway
run: $(RUN_STAMP)
	$(VENV)/bin/claude-max-api $(ARGS)

## make test: the whole test suite (what CI runs)
test: $(TEST_STAMP)
	@bash scripts/system-packages.sh
	@bash scripts/node-tools.sh
	$(VENV)/bin/ruff check gateway bridges tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check gateway bridges tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
