# Two commands for a new user: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
TOOLS := .tools
HELM := $(TOOLS)/helm

.PHONY: run test install install-test tools clean bench

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

## Start a single node on 127.0.0.1:7113 with data in ./data
run: install
	$(VENV)/bin/evstore serve --data-dir ./data

$(HELM):
	scripts/get-helm.sh $(TOOLS) $(PY)

tools: $(HELM)

## Install what the tests need and run the whole suite
test: install-test tools
	HELM=$(abspath $(HELM)) $(PY) -m pytest tests

bench: install-test
	$(PY) bench/append.py

clean:
	rm -rf $(VENV) $(TOOLS) data
