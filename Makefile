# Every target makes the one virtual environment (.venv) first if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck unit integration compose-test compose-up compose-up-discovery fuzz soak adversary bench wheelhouse base-image nomad-peer clean

# A strict editable install (a tree of links mypy can read, unlike an import
# hook) links the files that exist when it runs, so it is redone when a
# package folder gains or loses a file (the folder's mtime changes).
PACKAGE_DIRS := $(wildcard proxy actors bus bus/* bus/*/* cli sim)
$(STAMP): pyproject.toml $(wildcard *.py) $(filter-out %.py %__pycache__,$(PACKAGE_DIRS))
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=strict
	touch $(STAMP)

## The demo: a local cluster with a live view (ARGS="--duration 30" to stop by itself).
demo: $(STAMP)
	$(BIN)/rpcproxy demo $(ARGS)

## The whole suite: lint, types, unit, actor, integration and (when a Docker
## engine answers) compose tests.
test: lint typecheck
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# bench/ is a folder of scripts importing each other by bare name (and
# tests.*, rpcproxy.*), so it is checked from inside, as it runs.
typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy --strict examples
	cd bench && MYPYPATH=..:. $(CURDIR)/$(BIN)/mypy --strict --explicit-package-bases \
		--cache-dir $(CURDIR)/.mypy_cache/bench *.py

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit tests/actors

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

## Multi-container tests against docker-compose.yml (builds what they need).
compose-test: $(STAMP)
	$(BIN)/pytest -q -m compose tests/compose

## Far more fuzzing than the suite's 10,000 cases (about 10 minutes).
fuzz: $(STAMP)
	HYPOTHESIS_FUZZ_EXAMPLES=200000 $(BIN)/pytest -q tests/fuzz

## 60 s of load: 8 clients, a heartbeat every 10 ms, a rebalance every second.
soak: $(STAMP)
	$(BIN)/python tests/soak/run_soak.py --seconds 60

## Every issue-9 attack at once for 60 s, then SIGTERM while they run.
adversary: $(STAMP)
	$(BIN)/python tests/soak/adversary.py --seconds 60

## Benchmarks against this machine's limits; writes bench/RESULTS.md.
bench: $(STAMP)
	$(BIN)/python bench/run.py --write bench/RESULTS.md

## The compose setup, up in the background (prepares what it needs, like the tests:
## the wheelhouse, the Go peer its server stand-ins run, a base image if needed).
COMPOSE := $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
BASE_IMAGE ?= $(shell docker image inspect python:3.11-slim >/dev/null 2>&1 && echo python:3.11-slim || echo rpcproxy-base:bookworm)
compose-up: wheelhouse nomad-peer
	@if [ "$(BASE_IMAGE)" = rpcproxy-base:bookworm ]; then docker/build-base-image.sh; fi
	BASE_IMAGE=$(BASE_IMAGE) $(COMPOSE) up -d --build

## The same with docker-compose.discovery.yml: a name server (dnsmasq, on the
## local base image, made here whatever BASE_IMAGE is) and a proxy that asks it.
DISCOVERY_COMPOSE := $(COMPOSE) -f docker-compose.yml -f docker-compose.discovery.yml
compose-up-discovery: wheelhouse nomad-peer
	docker/build-base-image.sh
	BASE_IMAGE=$(BASE_IMAGE) $(DISCOVERY_COMPOSE) up -d --build

## Wheels of rpcproxy and its dependencies, installed into images offline.
wheelhouse: $(STAMP)
	rm -rf wheelhouse build/lib build/bdist.*
	$(BIN)/python -m pip wheel --quiet --wheel-dir wheelhouse .

## A local Debian base image, for engines that cannot pull python:3.11-slim.
base-image:
	docker/build-base-image.sh

## The reference Nomad peer (Go, on Debian's packages of Nomad's libraries):
## build/nomad-peer, static; installs Go and the libraries with apt-get if needed.
## The image copies it (docker-compose.yml's server stand-ins run it).
nomad-peer:
	tests/nomad_peer/build.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis wheelhouse build
