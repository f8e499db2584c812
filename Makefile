# `make repro` sets up .venv and runs the pipeline; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# dvc.yaml runs `python stages/...`: put the project's venv first on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: setup repro test test-all test-remotes test-ssh bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

repro: setup  ## the main job: the default pipeline
	dvc repro

test: setup  ## the default test suite (what CI runs)
	pytest

test-all: setup  ## also the slow tests
	pytest -m ""

test-remotes: setup  ## every DVC remote test, slow ones included (SSH skips without sshd: test-ssh)
	pytest -m "" tests/e2e/test_remotes.py

# Debian's package, not pip's: apt does not start the service where there is no init system or
# policy-rc.d forbids it (as in containers); the tests start their own sshd on 127.0.0.1.
test-ssh: setup  ## installs openssh-server (root, apt) and runs the SSH remote tests
	test -x /usr/sbin/sshd || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends openssh-server; }
	pytest -m "" tests/e2e/test_remotes.py -k ssh

bench: setup  ## speed against the classic DataLoader loop, train-stage memory, pipeline overhead
	python bench/train_speed.py
	python bench/train_memory.py
	python bench/pipeline_overhead.py

clean:  ## remove pipeline outputs (the DVC cache keeps them restorable)
	rm -rf data/raw data/processed models plots logs reports dvc_plots .resume
