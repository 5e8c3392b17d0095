# Two commands for a new user: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
TOOLS := .tools
HELM := $(TOOLS)/helm

.PHONY: run test test-unit install install-test tools clean bench etcd iptables prometheus debian-tools postgres

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

# Debian packages the tests need, as COMMAND:PACKAGE; each is installed only when its command is missing
DEBIAN_TOOLS := etcd:etcd-server iptables:iptables prometheus:prometheus promtool:prometheus

## etcd (cluster tests), iptables (partition tests), prometheus and promtool (alert rules, dashboards)
debian-tools:
	@missing=""; for tool in $(DEBIAN_TOOLS); do \
	  command -v $${tool%%:*} >/dev/null || missing="$$missing $${tool#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y --no-install-recommends $$missing \
	    || ($$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends $$missing); fi

etcd iptables prometheus: debian-tools

## PostgreSQL for the benchmarks' reference runs (Debian package postgresql; each run initdb's its own server)
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y postgresql || ($$SUDO apt-get update && $$SUDO apt-get install -y postgresql); }

## Install what the tests need and run the whole suite
test: install-test tools debian-tools postgres
	HELM=$(abspath $(HELM)) $(PY) -m pytest tests

## The fast subset for the inner loop: the unit tests (no etcd, helm or PostgreSQL needed)
test-unit: install-test
	$(PY) -m pytest tests/unit

bench: install-test postgres
	$(PY) bench/append.py
	$(PY) bench/mixed.py

clean:
	rm -rf $(VENV) $(TOOLS) data
