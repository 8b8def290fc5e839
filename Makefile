# The only entry points people and CI use. Every target installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PACKAGES := dfu profiles simulator gateway_agent fota_service hil benchmarks tests

.PHONY: setup system-deps demo test lint bench clean

# System packages the tests need: Mosquitto (MQTT end-to-end tests), PostgreSQL (the job service's shared
# database; the tests start their own throw-away server), venv support, systemd-analyze (unit checks),
# dbus-daemon (a private bus for bleak's BlueZ backend over the simulated bluetoothd).
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	$(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	command -v dbus-daemon >/dev/null 2>&1 || missing="$$missing dbus-daemon"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

setup: system-deps $(STAMP)

lint: setup
	$(VENV)/bin/ruff check $(PACKAGES)
	$(VENV)/bin/ruff format --check $(PACKAGES)
	$(VENV)/bin/mypy dfu profiles simulator gateway_agent fota_service hil

test: lint
	$(VENV)/bin/pytest -n 2 -q

demo: setup
	$(VENV)/bin/python -m gateway_agent demo

bench: setup
	$(VENV)/bin/python -m benchmarks.dfu_throughput
	$(VENV)/bin/python -m benchmarks.dfu_throughput --matrix --jobs 2
	$(VENV)/bin/python -m benchmarks.client_cpu

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
