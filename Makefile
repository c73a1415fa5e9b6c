# seqserve: the two commands of the README are `make serve` and `make test`.
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -euo pipefail -c

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
REPO ?= model_repository
PRESET ?= default
SERVE_FLAGS ?=
STAMPS := .stamps
PROTOS := $(shell find protos -name '*.proto')

export OMP_NUM_THREADS ?= 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install protos repository serve test lint tools clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# The project venv: serving (CPU runtime), training/export, and dev tools. Re-run when
# pyproject.toml changes. --no-compile: byte-compiling torch costs more than it saves here.
$(STAMPS)/venv: pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -e '.[serve-cpu,train,dev]'
	mkdir -p $(STAMPS) && touch $@

install: $(STAMPS)/venv protos  ## create .venv and install everything

$(STAMPS)/protos: $(STAMPS)/venv $(PROTOS) protos/generate.py
	$(PY) -m protos.generate
	touch $@

protos: $(STAMPS)/protos  ## generate the Python gRPC modules from protos/

repository: install  ## build the default model repository if models are missing
	$(VENV)/bin/seqserve build-repository --repository $(REPO) --preset $(PRESET)

serve: repository  ## build the default models if missing, then serve on 127.0.0.1:8001
	exec $(VENV)/bin/seqserve serve --model-repository $(REPO) $(SERVE_FLAGS)

tools:  ## Debian packages and the tritonclient/perf_analyzer tool venvs the tests use
	bash tests/tools/setup.sh

lint: install  ## ruff
	$(VENV)/bin/ruff check .

test: install tools  ## create .venv if missing, install, run the whole test suite
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

.PHONY: image-test
image-test: install  ## opt-in: build the CPU image with podman and run it (minutes; not in `test`)
	bash deploy/image-test.sh

clean:  ## remove build outputs (keeps .venv and .tools)
	rm -rf $(STAMPS)/protos .pytest_cache .ruff_cache
	find protos -name '*_pb2*.py*' -delete
