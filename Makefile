# opshub: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PORT ?= 8000
VENV := .venv
PY := $(VENV)/bin/python
NODE_PROXY := hub/node_modules/.bin/configurable-http-proxy
LABEXT := hub/opshub/lab/jupyter_data/labextensions/opshub-lab/package.json
PYTEST_ARGS ?=

.PHONY: help run fleet fleet-down runbooks-ci test-fleet install install-test bubblewrap bench test test-unit test-integration test-unattended test-browser lint format docs clean images up down test-docker test-chart

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

# Started as root, opshub runs each person's server under their own system account, and those
# accounts run this virtualenv's Python: it must come from an interpreter they can read. A python3
# in a private folder (pyenv under /root) is not; Debian's /usr/bin/python3 is.
BASE_PYTHON ?= $(shell hub/scripts/base-python)

$(VENV)/bin/python:
	$(BASE_PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: hub/pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e hub
	touch $@

$(VENV)/.installed-test: hub/pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e 'hub[test]'
	touch $@ $(VENV)/.installed-run

$(NODE_PROXY): hub/package.json
	cd hub && npm install --no-audit --no-fund --loglevel=error
	touch $@

# The JupyterLab extension (hub/labextension/, TypeScript): compiled with tsc, then bundled by JupyterLab's
# own builder against the JupyterLab in the virtualenv, into the package (opshub.singleuser puts it on
# JupyterLab's path). `npm test` and `npm run lint` in hub/labextension/ check it (tests/unit/test_labextension.py).
LABEXT_SOURCES := $(wildcard hub/labextension/src/*.ts hub/labextension/style/*) hub/labextension/tsconfig.json
$(LABEXT): hub/labextension/package.json hub/labextension/package-lock.json $(LABEXT_SOURCES) | $(VENV)/.installed-run
	cd hub/labextension && npm install --no-audit --no-fund --loglevel=error
	cd hub/labextension && node_modules/.bin/tsc --sourceMap
	cd hub/labextension && node node_modules/@jupyterlab/builder/lib/build-labextension.js \
		--core-path "$$(../../$(PY) -c 'import jupyterlab, os; print(os.path.join(os.path.dirname(jupyterlab.__file__), "staging"))')" .
	touch $@

# Every unattended run executes in a bubblewrap sandbox of its own (hub/opshub/sandbox.py): Debian's
# `bubblewrap`, installed here when missing and make runs as root (otherwise runs are refused, saying so).
bubblewrap:
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap; } \
		|| echo "bubblewrap is missing: unattended runs will be refused until it is installed (apt-get install bubblewrap)"; }

# The practice fleet (hub/opshub/fleet/, hub/docs/practice-fleet.md): Debian hosts in Docker with real
# sshd, apt, services and reboots, monitored by Prometheus, for running the runbooks live.
fleet: install ## start the practice fleet: hosts with pending updates to patch, and Prometheus watching them
	$(VENV)/bin/opshub fleet up --hub-port $(PORT)

fleet-down: install ## remove the practice fleet (its hosts, monitoring, /etc/hosts names and key)
	$(VENV)/bin/opshub fleet down

runbooks-ci: install ## run every shipped runbook live against the fleet (shared-notebooks/runbooks-ci.yaml): PASS/FAIL, JUnit in test-artifacts/
	OPSHUB_FLEET_CA=$(CURDIR)/state/fleet/tls/ca.crt $(VENV)/bin/opshub ci --folder shared-notebooks \
		--junit test-artifacts/runbooks-ci.xml --output test-artifacts/runbooks-ci \
		$(if $(wildcard state/fleet/ssh/id_ed25519),--credential SSH_PRIVATE_KEY=state/fleet/ssh/id_ed25519) $(CI_ARGS)

install: $(VENV)/.installed-run $(NODE_PROXY) $(LABEXT) bubblewrap ## create the project-local virtualenv and node_modules

install-test: $(VENV)/.installed-test $(NODE_PROXY) $(LABEXT) bubblewrap

run: install ## start the embedded default on 127.0.0.1:$(PORT) (make run PORT=8123); Ctrl-C stops it
	exec $(VENV)/bin/opshub hub --port $(PORT)

test: install-test ## install what the tests need, then run the whole suite
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-unit: install-test ## fast tests: settings, config functions, git mirroring and pulling (no servers)
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

test-integration: install-test ## tests against a live hub, proxy, git remote and spawned JupyterLabs
	$(VENV)/bin/pytest tests/integration $(PYTEST_ARGS)

test-unattended: install-test ## the runner, requests, typed parameters, schedules, alerts and locks (unit, then live: ~15 min)
	$(VENV)/bin/pytest tests/unit/test_queue.py tests/unit/test_scheduler.py tests/unit/test_triggers.py tests/unit/test_runner.py \
		tests/integration/test_unattended_runs.py tests/integration/test_unattended_restarts.py \
		tests/integration/test_alerts.py tests/integration/test_schedules_postgres.py tests/browser/test_unattended_browser.py \
		tests/unit/test_typed_parameters.py tests/integration/test_typed_parameters_live.py $(PYTEST_ARGS)

test-browser: install-test ## Debian's Chromium (installed when missing) driven by Playwright against a live hub
	$(VENV)/bin/pytest tests/browser $(PYTEST_ARGS)

bench: install-test ## benchmarks against a live hub, reported as ratios to a baseline of the same run
	$(VENV)/bin/python tests/bench/bench_history.py
	$(VENV)/bin/python tests/bench/bench_opshub_run.py
	$(VENV)/bin/python tests/bench/bench_dashboards.py
	$(VENV)/bin/python tests/bench/bench_interactive.py
	$(VENV)/bin/python tests/bench/bench_unattended.py
	$(VENV)/bin/python tests/bench/bench_live.py
	$(VENV)/bin/python tests/bench/bench_docker.py

lint: install-test ## ruff: lint and check formatting
	$(VENV)/bin/ruff check hub tests
	$(VENV)/bin/ruff format --check hub tests

format: install-test ## ruff: fix what can be fixed and format
	$(VENV)/bin/ruff check --fix hub tests
	$(VENV)/bin/ruff format hub tests

images: install ## build the ops and hub images (the base from Debian packages when no registry answers)
	images/build.sh

up: ## start opshub in Docker (after make images): hub in a container, one container per user
	images/up.sh

down: ## stop the Docker deployment; state, runbooks and homes stay on their volumes
	images/down.sh

test-docker: install-test ## Docker Engine tests (dockerd started when none runs): images, runbooks, make up/down
	$(VENV)/bin/pytest tests/docker $(PYTEST_ARGS)

test-fleet: install-test ## the practice fleet (Docker): the patching runbook live on the runner, runbooks' CI, the quick start
	$(VENV)/bin/pytest tests/fleet tests/unit/test_fleet.py $(PYTEST_ARGS)

test-chart: install-test ## the Helm chart, rendered by Helm's own engine and checked against Kubernetes' schemas (no cluster)
	$(VENV)/bin/pytest tests/chart $(PYTEST_ARGS)

docs: install ## regenerate the settings and runbook metadata references and the Helm chart's values schema from their schemas
	$(VENV)/bin/opshub config docs > hub/docs/settings.md
	$(VENV)/bin/python -m opshub.runbooks.metadata_docs hub/docs/runbooks.md
	$(VENV)/bin/python -m opshub.kubernetes values-schema helm/opshub/values.schema.json

clean: ## remove the virtualenv and node_modules (keeps state/: your hub's users and homes)
	rm -rf $(VENV) hub/node_modules
