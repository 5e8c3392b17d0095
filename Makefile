# Two commands for a new user: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
TOOLS := .tools
HELM := $(TOOLS)/helm

.PHONY: run test install install-test tools clean bench etcd iptables

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

## etcd for the cluster tests (Debian package etcd-server), installed only when missing
etcd:
	@command -v etcd >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y etcd-server || ($$SUDO apt-get update && $$SUDO apt-get install -y etcd-server); }

## iptables for the partition tests (Debian package iptables), installed only when missing
iptables:
	@command -v iptables >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y iptables || ($$SUDO apt-get update && $$SUDO apt-get install -y iptables); }

## Install what the tests need and run the whole suite
test: install-test tools etcd iptables
	HELM=$(abspath $(HELM)) $(PY) -m pytest tests

bench: install-test
	$(PY) bench/append.py

clean:
	rm -rf $(VENV) $(TOOLS) data
