# seqserve: the two commands of the README are `make serve` and `make test`.
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -euo pipefail -c

# The interpreter that makes .venv: the first of these that is Python 3.11 or newer
# (`make PYTHON=/path/to/python3.12` chooses another).
PYTHON ?= $(shell for p in python3.11 python3.12 python3.13 python3; do \
	  command -v $$p >/dev/null 2>&1 && \
	  $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; \
	done)
VENV := .venv
PY := $(VENV)/bin/python
# The venv's own stamp lives inside it: `rm -rf .venv` removes it too, and the next `make`
# builds the venv again instead of running a python that is gone.
VENV_STAMP := $(VENV)/.seqserve-installed
# torch: TORCH=cpu (the default without an NVIDIA GPU) installs PyTorch's CPU build, from a
# local wheel when pip's find-links hold one, else from PyTorch's CPU index (that second way is
# untested: this machine reaches no index but PyPI's); TORCH=cuda (the default when nvidia-smi is there) takes the pin from PyPI, a CUDA
# build of several GB. The version is pyproject.toml's pin, defined once.
TORCH ?= $(if $(shell command -v nvidia-smi 2>/dev/null),cuda,cpu)
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PIN := $(shell grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')
REPO ?= model_repository
PRESET ?= default
SERVE_FLAGS ?=
STAMPS := .stamps
PROTOS := $(shell find protos -name '*.proto')

export OMP_NUM_THREADS ?= 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install protos native repository serve test test-fast lint format tools clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# The project venv: serving (CPU runtime), training/export, and dev tools. Re-run when
# pyproject.toml changes. --no-compile: byte-compiling torch costs more than it saves here.
$(VENV_STAMP): pyproject.toml
	if [ ! -x $(PY) ]; then
	  [ -n "$(PYTHON)" ] || { echo "make: no Python 3.11 or newer found; set PYTHON=" >&2; exit 1; }
	  $(PYTHON) -m venv $(VENV)
	fi
	if [ "$(TORCH)" = cpu ]; then  # torch alone; the install below brings its dependencies
	  $(PY) -m pip install -q --no-compile --no-deps --no-index '$(TORCH_PIN)' 2>/dev/null ||
	    $(PY) -m pip install -q --no-compile --no-deps '$(TORCH_PIN)' --index-url $(TORCH_CPU_INDEX)
	fi
	$(PY) -m pip install -q --no-compile -e '.[serve-cpu,train,dev]'
	touch $@

install: $(VENV_STAMP) protos native  ## create .venv and install everything

$(STAMPS)/protos: $(VENV_STAMP) $(PROTOS) protos/generate.py
	$(PY) -m protos.generate
	mkdir -p $(STAMPS) && touch $@

protos: $(STAMPS)/protos  ## generate the Python gRPC modules from protos/

# The native gRPC front end (serving/native): a C++ extension module over Debian's gRPC. Its
# build dependencies come from apt (serving/native/deps.sh) and pybind11 from the venv; the
# objects build in parallel. Without apt (no root, no sudo) the server keeps its Python front
# end; the test suite under CI insists on the native one.
NATIVE_SO := serving/native/_frontend.so
NATIVE_DIR := build/native
NATIVE_GEN := $(NATIVE_DIR)/inference/grpc_service.pb.cc $(NATIVE_DIR)/inference/model_config.pb.cc \
	$(NATIVE_DIR)/seqserve/forecast/v1/forecast_service.pb.cc
NATIVE_OBJ := $(patsubst %.cc,$(NATIVE_DIR)/%.o,$(wildcard serving/native/*.cc)) \
	$(NATIVE_GEN:.cc=.o)
NATIVE_CXXFLAGS = -O2 -std=c++17 -fPIC -fvisibility=hidden -Wall -I$(NATIVE_DIR) \
	$$($(PY) -m pybind11 --includes) \
	$$(pkg-config --cflags grpc++ protobuf)

# The translator's native int8 encoder and decoder step (core/native/src): a C++ extension
# module that needs only a C++ compiler and pybind11 (from the venv). Without it, translators
# run on onnxruntime's graphs alone.
DECODER_SO := core/native/_decoder.so
DECODER_DIR := build/decoder
DECODER_OBJ := $(patsubst core/native/src/%.cc,$(DECODER_DIR)/%.o,$(wildcard core/native/src/*.cc))
DECODER_CXXFLAGS = -O3 -std=c++17 -fPIC -fvisibility=hidden -Wall -Wextra \
	-Wno-maybe-uninitialized -fno-math-errno -fno-trapping-math -fassociative-math \
	-fno-signed-zeros $$($(PY) -m pybind11 --includes)

native: $(VENV_STAMP)  ## build the native gRPC front end (needs apt) and translator
	@if bash serving/native/deps.sh; then
	  $(MAKE) -j2 --no-print-directory $(NATIVE_SO) $(DECODER_SO)
	else
	  echo "native: build dependencies not installed; seqserve serves with its Python front end" >&2
	  if command -v $(CXX) >/dev/null; then $(MAKE) -j2 --no-print-directory $(DECODER_SO); fi
	fi

$(DECODER_DIR)/%.o: core/native/src/%.cc core/native/src/*.h
	mkdir -p $(@D)
	$(CXX) $(DECODER_CXXFLAGS) -c $< -o $@

$(DECODER_SO): $(DECODER_OBJ)
	$(CXX) -shared $^ -o $@

$(NATIVE_DIR)/inference/%.pb.cc $(NATIVE_DIR)/inference/%.pb.h: protos/inference/%.proto
	mkdir -p $(NATIVE_DIR)
	protoc -Iprotos --cpp_out=$(NATIVE_DIR) protos/inference/$*.proto

$(NATIVE_DIR)/serving/native/%.o: serving/native/%.cc serving/native/*.h $(NATIVE_GEN)
	mkdir -p $(@D)
	$(CXX) $(NATIVE_CXXFLAGS) -c $< -o $@

$(NATIVE_DIR)/seqserve/forecast/v1/%.pb.cc $(NATIVE_DIR)/seqserve/forecast/v1/%.pb.h: \
		protos/seqserve/forecast/v1/%.proto
	mkdir -p $(NATIVE_DIR)
	protoc -Iprotos --cpp_out=$(NATIVE_DIR) protos/seqserve/forecast/v1/$*.proto

$(NATIVE_DIR)/inference/%.o: $(NATIVE_DIR)/inference/%.cc $(NATIVE_GEN)
	$(CXX) $(NATIVE_CXXFLAGS) -c $< -o $@

$(NATIVE_DIR)/seqserve/forecast/v1/%.o: $(NATIVE_DIR)/seqserve/forecast/v1/%.cc $(NATIVE_GEN)
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

lint: install  ## ruff check and ruff format --check (tests/test_lint.py runs both)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install  ## ruff format the tree, and apply ruff's safe fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Under `make test` a tool the suite needs and `make` installs is required: its tests fail
# rather than skip (tests/conftest.py, `missing`), so a local run means what CI means.
# Two pytest workers: most of the suite waits on servers and tools in subprocesses, so two
# workers on two cores take about two thirds of the time of one. The tests of the session's
# tiny models share one worker (tests/conftest.py), which trains them once.
TEST_WORKERS ?= 2
test: install tools  ## create .venv if missing, install, run the whole test suite
	SEQSERVE_REQUIRE_TOOLS=1 $(PY) -m pytest -q -p no:cacheprovider --durations=15 \
	  -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-fast: install tools  ## the fast lane (under 3 minutes): every layer's unit tests, one served request
	SEQSERVE_REQUIRE_TOOLS=1 $(PY) -m pytest -q -p no:cacheprovider -m "not slow" --durations=10 \
	  $(PYTEST_ARGS)

.PHONY: native-sanitize
native-sanitize: native  ## opt-in: the native front end's tests under ASan and UBSan (minutes)
	bash serving/native/sanitize.sh

# Fuzzing (docs/serving.md, "Security"). `make test` replays the committed corpus; `make fuzz`
# runs each target for FUZZ_SECONDS (the recorded campaign: FUZZ_SECONDS=600) and merges what
# added coverage into tests/fuzz/corpus/. Python targets run under atheris; the native
# acceptance target under clang's libFuzzer with ASan and UBSan (clang from apt).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= v2_request bytes_tensor forecast_request translate_request model_config \
	native_accept
FUZZ_REPLAY ?= build/fuzz/accept_replay
FUZZ_SOURCES := serving/native/accept.cc serving/native/fuzz/accept_fuzzer.cc \
	$(NATIVE_GEN:.cc=.o)
FUZZ_FLAGS = -O1 -g -std=c++17 -Iserving/native -I$(NATIVE_DIR) $$(pkg-config --cflags protobuf)

.PHONY: fuzz fuzz-replay-binary
fuzz-replay-binary: $(NATIVE_GEN:.cc=.o)  ## the native fuzz target as a corpus replayer (g++, ASan, UBSan)
	mkdir -p $(dir $(FUZZ_REPLAY))
	$(CXX) $(FUZZ_FLAGS) -fsanitize=address,undefined -fno-sanitize-recover=undefined \
	  $(FUZZ_SOURCES) serving/native/fuzz/replay_main.cc -o $(FUZZ_REPLAY) \
	  $$(pkg-config --libs protobuf)

fuzz: install  ## coverage-guided fuzzing of the decoders, FUZZ_SECONDS per target (minutes)
	$(PY) -m pip install -q atheris==3.0.0
	command -v clang++-14 >/dev/null || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang-14 libclang-rt-14-dev >/dev/null)
	mkdir -p build/fuzz
	clang++-14 $(FUZZ_FLAGS) -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	  $(FUZZ_SOURCES) \
	  -o build/fuzz/accept_fuzzer $$(pkg-config --libs protobuf)
	for t in $(FUZZ_TARGETS); do
	  rm -rf build/fuzz/new-$$t build/fuzz/merged-$$t
	  mkdir -p build/fuzz/new-$$t build/fuzz/merged-$$t
	  if [ $$t = native_accept ]; then run="build/fuzz/accept_fuzzer"
	  else run="$(PY) -m tests.fuzz.run $$t"; fi
	  echo "fuzz: $$t for $(FUZZ_SECONDS) s"
	  $$run -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
	    -dict=$$(ls tests/fuzz/$$t.dict 2>/dev/null || echo tests/fuzz/protobuf.dict) \
	    -artifact_prefix=build/fuzz/$$t- \
	    build/fuzz/new-$$t tests/fuzz/corpus/$$t 2>&1 | tail -n 25 | tee build/fuzz/$$t.log
	  $$run -merge=1 build/fuzz/merged-$$t tests/fuzz/corpus/$$t build/fuzz/new-$$t >/dev/null 2>&1
	  if [ -n "$$(ls build/fuzz/merged-$$t)" ]; then  # the corpus, minimised; else keep it
	    rm -rf tests/fuzz/corpus/$$t && mv build/fuzz/merged-$$t tests/fuzz/corpus/$$t
	  fi
	done
	$(PY) -m tests.fuzz.run --seed  # the seeds stay, whatever the merge kept

.PHONY: image-test
image-test: install  ## opt-in: build the CPU image with podman and run it (minutes; not in `test`)
	bash deploy/image-test.sh

clean:  ## remove build outputs (keeps .venv and .tools)
	rm -rf $(STAMPS)/protos .pytest_cache .ruff_cache $(NATIVE_DIR) $(NATIVE_SO) build/fuzz
	find protos -name '*_pb2*.py*' -delete
