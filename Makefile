# `make repro` sets up .venv and runs the pipeline; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# dvc.yaml runs `python stages/...`: put the project's venv first on PATH.
export PATH := $(BIN):$(PATH)
# The page template that lets `dvc plots show` render without a network (docs/plots.md).
PLOTS_TEMPLATE := .dvc/plots_offline.html

.PHONY: setup repro repro-parallel test lint test-all test-browser browser test-remotes test-ssh test-vendors bench clean

setup: $(VENV)/.installed $(PLOTS_TEMPLATE)

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# DVC reads plots.html_template relative to .dvc/. It is set only once the file exists: a
# missing template makes `dvc plots show` fail, where without the setting it uses its own page.
$(PLOTS_TEMPLATE): $(VENV)/.installed src/torchrepro/plots_html.py
	python -m torchrepro.plots_html $@
	dvc config --local plots.html_template $(notdir $@)

repro: setup  ## the main job: the default pipeline
	dvc repro

# Independent stages side by side (scripts/repro_parallel.py): the same results and dvc.lock.
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
repro-parallel: setup  ## the default pipeline, JOBS stage processes at a time (default: cores)
	python scripts/repro_parallel.py --jobs $(JOBS)

test: setup lint browser  ## the default test suite (what CI runs)
	pytest

lint: setup  ## ruff: the style is the formatter's and the linter's, not a reviewer's
	ruff format --check src stages tests bench scripts
	ruff check src stages tests bench scripts

test-browser: setup browser  ## only the check that `dvc plots show` pages render offline
	pytest tests/e2e/test_plots_offline.py

# Debian's chromium for the browser test: installed when missing where apt-get runs as root,
# as on CI (about 25 s and 480 MB); elsewhere that test skips and says why.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && echo "installing chromium for tests/e2e/test_plots_offline.py" && apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "chromium is not installed: tests/e2e/test_plots_offline.py will skip (as root: apt-get install chromium)"

test-all: setup browser  ## also the slow tests
	pytest -m ""

test-remotes: setup  ## every DVC remote test, slow ones included (SSH skips without sshd: test-ssh)
	pytest -m "" tests/e2e/test_remotes.py

# Debian's package, not pip's: apt does not start the service where there is no init system or
# policy-rc.d forbids it (as in containers); the tests start their own sshd on 127.0.0.1.
test-ssh: setup  ## installs openssh-server (root, apt) and runs the SSH remote tests
	test -x /usr/sbin/sshd || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends openssh-server; }
	pytest -m "" tests/e2e/test_remotes.py -k ssh

# Debian's qemu-user runs the kernels on an emulated Intel CPU (Intel's CPUID, AVX2 and FMA),
# so MKL and oneDNN take the code they take on Intel hosts: portable's cross-vendor check.
test-vendors: setup  ## installs qemu-user (root, apt) and checks portable's bytes on an emulated Intel CPU
	command -v qemu-x86_64 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends qemu-user; }
	pytest -m "" tests/test_kernels.py

bench: setup  ## speed against the classic DataLoader loop, train-stage memory, pipeline overhead, 1 vs 2 processes
	python bench/train_speed.py
	python bench/train_memory.py
	python bench/pipeline_overhead.py
	python bench/distributed_speed.py

clean:  ## remove pipeline outputs (the DVC cache keeps them restorable)
	rm -rf data/raw data/processed models predictions plots logs reports dvc_plots .resume
