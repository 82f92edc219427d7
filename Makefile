# Two commands do everything: `make run` (local stack, demo, keeps serving) and `make test`.
# Both create the virtualenv on first use; nothing else needs installing by hand.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help venv run test lint fmt bench clean

help:
	@echo "make run    start emulators, simulated gateway and consumer; publish a demo; serve until Ctrl-C"
	@echo "make test   lint, then the whole test suite (emulators and simulated gateway included)"
	@echo "make bench  benchmarks against the local stack (writes bench/results.json)"
	@echo "make lint   ruff and the static checks of gateway-image/ and infra/"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed, found " + sys.version.split()[0] + ": run make with PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

venv: $(STAMP)

run: $(STAMP)
	@$(BIN)/python -m consumer.devstack run

test: $(STAMP) lint
	@$(BIN)/python -m consumer.devstack preflight
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	@$(BIN)/python -m consumer.devstack preflight
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
