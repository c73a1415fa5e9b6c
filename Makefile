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

.PHONY: help install protos native repository serve test lint tools clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# The project venv: serving (CPU runtime), training/export, and dev tools. Re-run when
# pyproject.toml changes. --no-compile: byte-compiling torch costs more than it saves here.
$(STAMPS)/venv: pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -e '.[serve-cpu,train,dev]'
	mkdir -p $(STAMPS) && touch $@

install: $(STAMPS)/venv protos native  ## create .venv and install everything

$(STAMPS)/protos: $(STAMPS)/venv $(PROTOS) protos/generate.py
	$(PY) -m protos.generate
	touch $@

protos: $(STAMPS)/protos  ## generate the Python gRPC modules from protos/

# The native gRPC front end (serving/native): a C++ extension module over Debian's gRPC. Its
# build dependencies come from apt (serving/native/deps.sh) and pybind11 from the venv; the
# objects build in parallel. Without apt (no root, no sudo) the server keeps its Python front
# end; the test suite under CI insists on the native one.
NATIVE_SO := serving/native/_frontend.so
NATIVE_DIR := build/native
NATIVE_GEN := $(NATIVE_DIR)/inference/grpc_service.pb.cc $(NATIVE_DIR)/inference/model_config.pb.cc
NATIVE_OBJ := $(patsubst %.cc,$(NATIVE_DIR)/%.o,$(wildcard serving/native/*.cc)) \
	$(NATIVE_GEN:.cc=.o)
NATIVE_CXXFLAGS = -O2 -std=c++17 -fPIC -fvisibility=hidden -Wall -I$(NATIVE_DIR) \
	$$($(PY) -m pybind11 --includes) \
	$$(pkg-config --cflags grpc++ protobuf)

native: $(STAMPS)/venv  ## build the native gRPC front end (needs apt; else Python serves)
	@if bash serving/native/deps.sh; then
	  $(MAKE) -j2 --no-print-directory $(NATIVE_SO)
	else
	  echo "native: build dependencies not installed; seqserve serves with its Python front end" >&2
	fi

$(NATIVE_DIR)/inference/%.pb.cc $(NATIVE_DIR)/inference/%.pb.h: protos/inference/%.proto
	mkdir -p $(NATIVE_DIR)
	protoc -Iprotos --cpp_out=$(NATIVE_DIR) protos/inference/$*.proto

$(NATIVE_DIR)/serving/native/%.o: serving/native/%.cc serving/native/*.h $(NATIVE_GEN)
	mkdir -p $(@D)
	$(CXX) $(NATIVE_CXXFLAGS) -c $< -o $@

$(NATIVE_DIR)/inference/%.o: $(NATIVE_DIR)/inference/%.cc $(NATIVE_GEN)
	$(CXX) $(NATIVE_CXXFLAGS) -c $< -o $@

.SECONDARY: $(NATIVE_GEN)

$(NATIVE_SO): $(NATIVE_OBJ)
	$(CXX) -shared $^ -o $@ $$(pkg-config --libs grpc++ protobuf)

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

.PHONY: native-sanitize
native-sanitize: native  ## opt-in: the native front end's tests under ASan and UBSan (minutes)
	bash serving/native/sanitize.sh

.PHONY: image-test
image-test: install  ## opt-in: build the CPU image with podman and run it (minutes; not in `test`)
	bash deploy/image-test.sh

clean:  ## remove build outputs (keeps .venv and .tools)
	rm -rf $(STAMPS)/protos .pytest_cache .ruff_cache $(NATIVE_DIR) $(NATIVE_SO)
	find protos -name '*_pb2*.py*' -delete
