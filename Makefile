# `make repro` sets up .venv and runs the pipeline; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# dvc.yaml runs `python stages/...`: put the project's venv first on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: setup repro test lint test-all bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

repro: setup  ## the main job: the default pipeline
	dvc repro

test: setup lint  ## the default test suite (what CI runs)
	pytest

lint: setup  ## ruff: the style is the formatter's and the linter's, not a reviewer's
	ruff format --check src stages tests bench
	ruff check src stages tests bench

test-all: setup  ## also the slow tests
	pytest -m ""

bench: setup  ## speed against the classic DataLoader loop, train-stage memory, pipeline overhead
	python bench/train_speed.py
	python bench/train_memory.py
	python bench/pipeline_overhead.py

clean:  ## remove pipeline outputs (the DVC cache keeps them restorable)
	rm -rf data/raw data/processed models predictions plots logs reports dvc_plots .resume
