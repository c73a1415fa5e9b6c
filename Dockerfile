# seqserve, CPU image: `seqserve serve` with onnxruntime and nothing from training (no torch).
#
#   docker build -t seqserve:cpu .                                   # the serving image
#   docker run -p 8000:8000 -p 8001:8001 -p 8002:8002 -v "$PWD/model_repository:/models:ro" seqserve:cpu
#   docker build --target repository-builder -t seqserve:builder .   # torch (CPU), trains models
#   docker build --target baked -t seqserve:baked .                  # serving + models baked in
#
# Offline or behind a mirror: every stage passes pip's own variables through, so a local base
# and a local wheel folder work without editing this file (deploy/image-test.sh does that):
#   --build-arg BASE_IMAGE=localhost/bookworm-python:latest \
#   --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/src/.tools/wheels
# (.dockerignore keeps .tools/wheels in the build context, and nothing else of .tools.)
# The default base: the interpreter the project is tested with, Debian bookworm, slim.
ARG BASE_IMAGE=python:3.11.7-slim-bookworm

# ---- build: the serving venv in /opt/seqserve; protobuf modules generated here -------------
FROM ${BASE_IMAGE} AS build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
# grpcio-tools must match grpcio (pyproject.toml pins both; tests/deploy checks they agree).
ARG GRPCIO_TOOLS=grpcio-tools==1.85.1
ARG PYBIND11=pybind11==3.0.1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
# The native front end's build dependencies (serving/native/deps.sh), from bookworm. Not pinned:
# the base tag fixes the release, and the archive drops superseded versions.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ make pkg-config libgrpc++-dev \
      libprotobuf-dev protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The generated *_pb2 modules, the native front end and the native translator are build outputs,
# never in the context: build them with a throw-away venv, then install seqserve (non-editable,
# the two .so files as package data) with the CPU runtime only. The translator's kernels choose
# AMX, AVX-512 VNNI or portable code when they load, so the image runs on any x86-64 CPU.
RUN python3 -m venv /opt/protoc \
 && /opt/protoc/bin/pip install "${GRPCIO_TOOLS}" "${PYBIND11}" \
 && /opt/protoc/bin/python -m protos.generate \
 && make -j2 serving/native/_frontend.so core/native/_decoder.so PY=/opt/protoc/bin/python \
 && python3 -m venv /opt/seqserve \
 && /opt/seqserve/bin/pip install ".[serve-cpu]" \
 && /opt/seqserve/bin/pip check

# ---- repository-builder: trains and exports the default models (torch, CPU wheel) ----------
#   docker run --rm -v models:/models seqserve:builder   (what compose's `models` service does)
FROM build AS repository-builder
# (build arguments are per stage: declared again to reach this one)
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
# The plain registry's torch==2.13.0 for Linux is a multi-GB CUDA build: take the CPU wheel from
# PyTorch's CPU index first, then the rest of the training extra (torch already satisfied). With
# PIP_NO_INDEX the wheel folder must hold the CPU wheel (torch-2.13.0+cpu).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN if [ -n "${PIP_NO_INDEX:-}" ]; then /opt/seqserve/bin/pip install "torch==2.13.0"; \
    else /opt/seqserve/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==2.13.0"; fi \
 && /opt/seqserve/bin/pip install ".[serve-cpu,train]" \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin seqserve \
 && mkdir /models && chown seqserve:seqserve /models
ENV PATH=/opt/seqserve/bin:$PATH \
    OMP_NUM_THREADS=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["seqserve"]
CMD ["build-repository", "--repository", "/models"]

# ---- serving-base: the runtime, without models ---------------------------------------------
FROM ${BASE_IMAGE} AS serving-base
# The native front end's runtime libraries (gRPC C++ and protobuf, as it was built against).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgrpc++1.51 libprotobuf32 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin seqserve \
 && mkdir /models && chown seqserve:seqserve /models
COPY --from=build /opt/seqserve /opt/seqserve
ENV PATH=/opt/seqserve/bin:$PATH \
    OMP_NUM_THREADS=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000 8001 8002
# grpc.health.v1 through the server's own probe (exit 0 SERVING, 1 not serving, 2 unreachable).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["seqserve", "health", "-u", "127.0.0.1:8001", "--timeout", "3"]
ENTRYPOINT ["seqserve"]
# Bound to all interfaces inside the container (the default, 127.0.0.1, is unreachable through
# a published port); the model repository is mounted (or baked) at /models.
CMD ["serve", "--model-repository", "/models", "--grpc-address", "0.0.0.0", \
     "--grpc-port", "8001", "--http-address", "0.0.0.0", "--http-port", "8000", \
     "--metrics-address", "0.0.0.0", "--metrics-port", "8002"]

# ---- baked: serving with the default models inside (no volume needed) ----------------------
FROM repository-builder AS models
RUN ["seqserve", "build-repository", "--repository", "/models"]

FROM serving-base AS baked
COPY --from=models /models /models

# ---- runtime (the default target): serving, models mounted at /models -----------------------
FROM serving-base AS runtime
