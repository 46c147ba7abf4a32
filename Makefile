# Every target makes the one virtual environment (.venv) first if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck unit integration compose-test wheelhouse base-image clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
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

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy --strict examples

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit tests/actors

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

## Multi-container tests against docker-compose.yml (builds what they need).
compose-test: $(STAMP)
	$(BIN)/pytest -q -m compose tests/compose

## Wheels of rpcproxy and its dependencies, installed into images offline.
wheelhouse: $(STAMP)
	rm -rf wheelhouse
	$(BIN)/python -m pip wheel --quiet --wheel-dir wheelhouse .

## A local Debian base image, for engines that cannot pull python:3.11-slim.
base-image:
	docker/build-base-image.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis wheelhouse build
