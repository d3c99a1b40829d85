# The two set-up commands of the README: `make run` and `make test`. Each creates its own virtualenv.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: run test install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

## run: the gateway on embedded defaults (SQLite, in-process worker, notices written to files)
run: install
	$(BIN)/gateway init
	$(BIN)/gateway run

## test: the whole test suite (SQLite and PostgreSQL, Redis, RabbitMQ, Chromium when present)
test: install-test
	@if [ -x .ci/ensure-chromium ]; then .ci/ensure-chromium; fi
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
