PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test

$(BIN)/tsn: setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/tsn

test: install
	$(BIN)/python -m pytest

# Dataset pipelines (ucf101, hmdb51, demo): pipelines/*.mk
-include $(sort $(wildcard pipelines/*.mk))
