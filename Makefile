.DEFAULT_GOAL := help
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test test-fast test-slurm

$(BIN)/tsn: setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/tsn

# The whole suite (what CI runs)
test: install
	$(BIN)/python -m pytest --durations=10 $(PYTEST_ARGS)

# While developing: everything but the end-to-end tests marked slow
test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# pipelines/slurm/*.sh under a real one-node SLURM (as root; installs the Debian packages
# slurmctld slurmd slurm-client munge when missing): pipelines/slurm/test.sh says what it checks
test-slurm: install
	pipelines/slurm/local-cluster.sh install
	pipelines/slurm/test.sh

# Dataset pipelines (ucf101, hmdb51, demo): pipelines/*.mk
-include $(sort $(wildcard pipelines/*.mk))
