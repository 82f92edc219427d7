# Two commands do everything: `make run` (local stack, demo, keeps serving) and `make test`.
# Both create the virtualenv on first use; nothing else needs installing by hand.

PYTHON ?= python3
# Python here caches the bytecode it compiles (in gitignored __pycache__ directories), whatever the machine says: a
# machine that sets PYTHONDONTWRITEBYTECODE (CI's does) made every process the suite starts compile the Google
# clients again, and every pytest worker rewrite every test module's assertions again (pytest 3 m 07 s against
# 2 m 41 s with them cached; collecting 4.0 s against 1.7 s a worker).
export PYTHONDONTWRITEBYTECODE :=
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help venv system-packages run stop test check lint fmt bench clean

help:
	@echo "make run    start emulators, simulated gateway and consumer; publish a demo; serve until Ctrl-C"
	@echo "make stop   end a local stack left running by an earlier make run (its terminal was killed)"
	@echo "make test   lint, then the whole test suite (emulators and simulated gateway included)"
	@echo "make check  the fast loop (< 30 s): ruff, mypy and the tests that need no emulator"
	@echo "make bench  benchmarks against the local stack (writes bench/results.json)"
	@echo "make lint   ruff, mypy and the static checks of gateway-image/ and infra/"

# uv installs the dependencies (about 7 s where pip takes 20; 1 s from uv's cache alone, which it tries first:
# resolving against the index is six of the seven); pip, which only installs uv, is Python's own. A machine whose
# pip reaches its index through pip.conf (which uv does not read) falls back to pip, saying so.
# Nothing is byte-compiled at install (all of it: 15 s of CPU); what the tests import is compiled once, by one
# collection, before the first run's seven workers start (PRIMED, below).
INSTALL = $(BIN)/python -m uv pip install --quiet
define uv_install # python, requirement: from uv's cache, else from the index
	$(INSTALL) --offline --python $(1) $(2) 2>/dev/null || $(INSTALL) --python $(1) $(2)
endef
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed, found " + sys.version.split()[0] + ": run make with PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-compile uv
	$(call uv_install,$(BIN)/python,-e '.[dev]') || \
	  { echo "uv could not install the dependencies: installing them with pip" >&2; \
	    $(BIN)/python -m pip install --quiet --no-compile -e '.[dev]'; }
	@touch $@

venv: $(STAMP)

# Debian packages some tests drive for real: Xvfb (the gateway image's screen, tests/deploy/test_launcher_screen.py),
# Chromium (the report page, tests/consumer/test_report.py) and iptables (the metadata rule,
# tests/deploy/test_metadata_firewall.py), as package:command. Installed once with apt-get when missing (CI runs as
# root on Debian); elsewhere, one line says what to install.
SYSTEM_PACKAGES ?= xvfb:Xvfb chromium:chromium iptables:iptables

system-packages:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do command -v "$${pair#*:}" >/dev/null 2>&1 || missing="$$missing $${pair%%:*}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian packages:$$missing"; \
	    (apt-get install -y --no-install-recommends $$missing >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null && apt-get install -y --no-install-recommends $$missing >/dev/null)) || \
	    { echo "apt-get could not install$$missing: install them, then run make again" >&2; exit 1; }; \
	  else echo "missing Debian packages:$$missing (apt-get install$$missing, as root)" >&2; exit 1; fi; \
	fi

run: $(STAMP)
	@$(BIN)/python -m devstack run

stop: $(STAMP)
	@$(BIN)/python -m devstack stop

# Most of the suite waits on the emulators' delivery ticks, ack deadlines and the simulated gateway, not on the CPU,
# so it runs on seven workers sharing one pair of emulators (tests/shared_emulators.py), tests handed out one by one
# (a module whose fixture starts a whole stack stays on one worker: its xdist_group). The lint (ruff, mypy,
# hadolint, checkov: CPU, not waiting) runs beside the tests; both must pass. Tests marked `alone` (pacing counted at
# the simulated gateway as it reads) run after the others, by themselves. Seven workers: the parallel phase took
# 170 s on five, 146 s on six, 133-141 s on seven (one run on eight took 230 s).
TEST_WORKERS ?= 7

# Seven workers starting together on an empty bytecode cache each compile the same pandas, hypothesis and test
# modules: on a fresh clone their start and collection took 42 s of CPU (26 s of both cores), against 23-25 s once
# compiled. One collection first compiles them once: 7 s of one core, beside the lint, once per virtualenv.
PRIMED := $(VENV)/.bytecode-stamp
$(PRIMED): $(STAMP)
	@$(BIN)/python -m pytest -q --collect-only -p no:cacheprovider >/dev/null 2>&1; touch $@

test: $(STAMP) system-packages
	@$(BIN)/python -m devstack preflight
	@$(MAKE) --no-print-directory lint > $(VENV)/lint.log 2>&1 & lint=$$!; \
	$(MAKE) --no-print-directory $(PRIMED); \
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not alone" $(PYTEST_ARGS) && \
	$(BIN)/python -m pytest -m alone $(PYTEST_ARGS); tests=$$?; \
	wait $$lint; linted=$$?; cat $(VENV)/lint.log; \
	if [ $$linted -ne 0 ]; then echo "make lint failed (above)" >&2; fi; \
	exit $$(( tests || linted ))

# The fast loop while changing code (< 30 s): no emulators, no checkov, no wheel build, the property tests with 100
# examples each (tests/conftest.py, profile `check`); mypy runs beside the tests, which spend part of their time in
# the simulated gateway's pacing windows. `make test`, which CI runs, still runs everything, the property tests with
# their full 400. Four workers: 27-31 s against 30-33 s on three, measured in the same hour (a third of the tests wait
# on pacing windows rather than the CPU).
CHECK_WORKERS ?= 4

check: $(STAMP) system-packages
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@$(BIN)/mypy > $(VENV)/mypy.log 2>&1 & typing=$$!; \
	HYPOTHESIS_PROFILE=check $(BIN)/python -m pytest -q -p no:cacheprovider -m "not emulators and not wheel" \
		-n $(CHECK_WORKERS) $(PYTEST_ARGS); tests=$$?; \
	wait $$typing; typed=$$?; cat $(VENV)/mypy.log; exit $$(( tests || typed ))

# checkov lives in its own venv: its pins clash with the project's google-cloud dependencies. Installed once, by
# the project venv's uv (about 5 s; pip took 55 s of CPU beside the tests), or by pip where uv cannot.
TOOLS       ?= .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed-stamp
CHECKOV     ?= checkov==3.3.30

$(TOOLS_STAMP): $(STAMP)
	@test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	@echo '*' > $(TOOLS)/.gitignore
	$(call uv_install,$(TOOLS)/bin/python,'$(CHECKOV)') || $(TOOLS)/bin/python -m pip install --quiet --no-compile '$(CHECKOV)'
	@touch $@

lint: $(STAMP) $(TOOLS_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint --config gateway-image/.hadolint.yaml gateway-image/Dockerfile
	LOG_LEVEL=ERROR $(TOOLS)/bin/checkov --directory infra --framework terraform --config-file infra/.checkov.yaml \
		--skip-download --quiet --compact
	@if command -v terraform >/dev/null 2>&1; then TF_CLI_CONFIG_FILE=/dev/null terraform fmt -check -recursive infra; \
	else echo "terraform not installed: skipping terraform fmt -check (tests/deploy/test_infra.py parses infra/*.tf)"; fi

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	@$(BIN)/python -m devstack preflight
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
