# omniseq: `make demo` runs the whole loop on built-in demo data; `make test` sets up and runs the tests.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.omniseq-installed
RUN ?= runs/demo
# Never let pip (or a package's isolated build) resolve an unpinned torch: it pulls 2+ GB of CUDA wheels.
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
# DeepSpeed ships as source: build it without compiling ops (they JIT on a GPU machine when used).
export DS_BUILD_OPS := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help setup test lint format demo bench clean

help:  ## list the targets
	@grep -E '^[a-z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv and install omniseq with its test dependencies (quick when done)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	@touch $(STAMP)

lint: setup  ## ruff check and format check
	$(VENV)/bin/ruff check omniseq tests bench
	$(VENV)/bin/ruff format --check omniseq tests bench

format: setup  ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix omniseq tests bench
	$(VENV)/bin/ruff format omniseq tests bench

test: setup lint  ## lint, then the CPU test suite
	CUDA_VISIBLE_DEVICES= $(PY) -m pytest -q tests

demo: setup  ## the main job on built-in demo data (see README)
	$(PY) -m omniseq.demo --out $(RUN)

clean:  ## remove generated runs and caches (keeps .venv)
	rm -rf runs .pytest_cache .ruff_cache .hypothesis
