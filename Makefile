# opshub: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PORT ?= 8000
VENV := .venv
PY := $(VENV)/bin/python
NODE_PROXY := hub/node_modules/.bin/configurable-http-proxy
PYTEST_ARGS ?=

.PHONY: help run install test test-unit test-integration lint format docs clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: hub/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e 'hub[test]'
	touch $@

$(NODE_PROXY): hub/package.json
	cd hub && npm install --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.installed $(NODE_PROXY) ## create the project-local virtualenv and node_modules

run: install ## start the embedded default on 127.0.0.1:$(PORT) (make run PORT=8123); Ctrl-C stops it
	exec $(VENV)/bin/opshub hub --port $(PORT)

test: install ## install what the tests need, then run the whole suite
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-unit: install ## fast tests: settings, config functions, runbook mirroring (no hub)
	$(VENV)/bin/pytest -m "not integration" $(PYTEST_ARGS)

test-integration: install ## tests against a live hub, proxy and git remote
	$(VENV)/bin/pytest -m integration $(PYTEST_ARGS)

lint: install ## ruff: lint and check formatting
	$(VENV)/bin/ruff check hub tests
	$(VENV)/bin/ruff format --check hub tests

format: install ## ruff: fix what can be fixed and format
	$(VENV)/bin/ruff check --fix hub tests
	$(VENV)/bin/ruff format hub tests

docs: install ## regenerate the settings reference from the schema
	$(VENV)/bin/opshub config docs > hub/docs/settings.md

clean: ## remove the virtualenv and node_modules (keeps state/: your hub's users and homes)
	rm -rf $(VENV) hub/node_modules
