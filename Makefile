# `make demo` and `make test` set everything up on a fresh Debian machine and are idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

# System packages: unixODBC and the SQLite ODBC driver for the embedded source; the tests also
# need psqlODBC, a PostgreSQL server (started by the test fixture on 127.0.0.1), Java 17 (JVM
# Spark runs the silver transforms as a second engine) and Chromium (the UI test's headless
# screenshots of the UI).
DEMO_PACKAGES := unixodbc libsqliteodbc
TEST_PACKAGES := $(DEMO_PACKAGES) odbc-postgresql postgresql openjdk-17-jre-headless chromium
# Azurite, the Azure Blob storage emulator the ADLS tests run against, from npm into .azurite/
# (started by the test fixture). 3.35 is the last release that supports Node.js 18 (Debian 12).
AZURITE_VERSION := 3.35.0
AZURITE := .azurite/installed-$(AZURITE_VERSION)

.PHONY: demo test lint system-demo system-test venv azurite clean

demo: system-demo venv
	$(BIN)/spotify-lakehouse demo

test: system-test venv azurite lint
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

venv: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,azure]'
	touch $@

azurite: $(AZURITE)

$(AZURITE):
	@command -v npm >/dev/null || { $(call apt_install,nodejs npm); }
	npm install --prefix .azurite --no-save --no-audit --no-fund --loglevel=error \
	  azurite@$(AZURITE_VERSION)
	touch $@

system-demo:
	@$(call apt_install,$(DEMO_PACKAGES))

system-test:
	@$(call apt_install,$(TEST_PACKAGES))

# Installs the packages of $(1) that are missing, with sudo when not root.
define apt_install
missing=$$(for p in $(1); do \
  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
done); \
if [ -n "$$missing" ]; then \
  echo "Installing system packages:" $$missing; \
  sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
  $$sudo apt-get update -qq && \
  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
fi
endef

clean:
	rm -rf $(VENV) .data .pytest_cache .ruff_cache .import_linter_cache .azurite
