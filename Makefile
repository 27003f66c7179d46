# Two entry points: `make demo` (set up, then run the demo on the simulated cohort) and `make test`; developers
# also have `make test-fast` (the suite without its end-to-end Ray runs and long trainings: the edit loop).
# torch==2.13.0 is installed before the package so pip never pulls a multi-GB CUDA build on a CPU box.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast check-install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/comical demo --images --out demo-output --force

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q --durations=15

test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q --durations=10 -m "not slow"

# CI: the package as a cluster installs it (`pip install .`, no [dev]): every module imports, a command runs.
NODEV := /tmp/comical-nodev
check-install:
	rm -rf $(NODEV) && $(PYTHON) -m venv $(NODEV)
	$(NODEV)/bin/pip install -q --upgrade pip
	$(NODEV)/bin/pip install -q torch==2.13.0
	$(NODEV)/bin/pip install -q .
	cd /tmp && $(NODEV)/bin/python $(CURDIR)/.ci/import_all.py && $(NODEV)/bin/comical riskscore --help >/dev/null

clean:
	rm -rf $(VENV) demo-output
