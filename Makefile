# meshd — make targets. `make run` and `make test` are the two that matter.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
export PATH := $(CURDIR)/.deps/bin:$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help setup deps run test test-unit test-integration test-ansible lint format bench docs clean docker images compose-up compose-down

help:
	@echo "make run     — a demo mesh on this machine (embedded defaults)"
	@echo "make test    — the whole suite: lint, unit, integration, end-to-end"
	@echo "make setup   — .venv with meshd and its dev tools; the sidecar's compiled modules"
	@echo "make deps    — consul and bao into .deps/bin (for the tests)"
	@echo "make lint    — ruff, mypy --strict and ansible-lint"
	@echo "make bench   — benchmarks; report in bench/results/"
	@echo "make docs    — regenerate docs/reference/resources.md from the models"
	@echo "make docker  — Debian's docker.io, docker-compose and debootstrap (apt-get, as root)"
	@echo "make images  — meshd-base:bookworm, .deps/wheelhouse and meshd:local, no registry"
	@echo "               (engine: scripts/docker.sh start|stop|status; see docs/docker.md)"
	@echo "make test-ansible — ansible/site.yml deployed to two systemd containers (docs/ansible.md)"
	@echo "make compose-up   — the Compose stack (Consul, OpenBao, meshd, the demo, Prometheus) on"
	@echo "                    local images; the demo on http://127.0.0.1:8080 (docs/compose.md)"
	@echo "make compose-down — remove the stack, its network and its volumes"

setup:
	@scripts/setup-venv.sh
	@$(PY) scripts/native.py build

deps: setup
	@scripts/deps.sh
	@scripts/docker.sh install

run: setup
	@$(PY) -m meshd.demo

lint: setup
	@echo "lint: ruff"; $(VENV)/bin/ruff check .
	@echo "lint: ruff format --check"; $(VENV)/bin/ruff format --check --quiet .
	@echo "lint: mypy --strict"; $(VENV)/bin/mypy
	@echo "lint: docs/reference is current"; $(PY) -m meshd.schema.reference --check docs/reference/resources.md
	@echo "lint: ansible-lint"; cd ansible && ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/.deps/ansible/collections \
		$(CURDIR)/$(VENV)/bin/ansible-lint --offline -q

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test-unit: setup
	$(PY) -m pytest -m "not integration and not e2e" -q

test-integration: deps
	$(PY) -m pytest -m "integration or e2e" -q

# The Ansible deployment test alone (also part of `make test`).
test-ansible: deps
	$(PY) -m pytest tests/ansible -q

test: deps lint
	$(PY) -m pytest -q

bench: deps
	$(PY) -m bench

docs: setup
	$(PY) -m meshd.schema.reference --write docs/reference/resources.md

# The Docker tools (no system service is started) and the images built without a
# registry; the tests start and stop their own engine (scripts/docker.sh).
docker:
	@scripts/docker.sh install

images: setup docker
	@scripts/images.sh

# The Compose stack without a registry: local images (scripts/images.sh compose), this
# checkout's engine, healthy before it returns (scripts/compose.sh; docs/compose.md).
compose-up: deps
	@scripts/compose.sh up

compose-down:
	@scripts/compose.sh down

clean:
	rm -rf .run build *.egg-info .mypy_cache .ruff_cache .pytest_cache
