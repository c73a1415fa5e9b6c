#!/usr/bin/env bash
# `make image-test`: build the CPU image (the Dockerfile's default target) with podman and run
# it: the image's own HEALTHCHECK, a forecast and a translation over gRPC, the metrics, the
# non-root user, and no torch inside. Opt-in (not in `make test`): it installs podman, runc and
# debootstrap, builds a Debian base and takes minutes.
#
# This machine has no Docker engine and reaches no container registry, so (environment notes,
# section 5): the base is Debian bookworm built with debootstrap and imported into podman
# (BASE_IMAGE overrides the slim Python tag; the Dockerfile is unchanged), and pip inside the
# build cannot verify the registry's certificate, so the wheels are downloaded on the host into
# .tools/wheels and installed with PIP_NO_INDEX/PIP_FIND_LINKS. podman runs with runc and low
# ulimits (crun cannot set them in this sandbox), through a CONTAINERS_CONF of our own.
#
# Environment: IMAGE_TEST_BASE (an existing local base image to use instead of debootstrap);
# IMAGE_TEST_BUILDER=1 (also build the `repository-builder` target, torch included, let it fill
# a named volume with the tiny preset as compose's `models` service does, and serve that volume;
# a few minutes more); IMAGE_TEST_KEEP=1 (leave the container running).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
WORK=.tools/image-test
BASE=${IMAGE_TEST_BASE:-localhost/seqserve-base:bookworm}
IMAGE=localhost/seqserve:cpu-test
NAME=seqserve-image-test
start=$(date +%s)
say() { echo "image-test [$(( $(date +%s) - start ))s]: $*"; }

need=()
for tool in podman runc debootstrap; do command -v $tool >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  say "apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p "$WORK"
cat > "$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF=$PWD/$WORK/containers.conf

if ! podman image exists "$BASE"; then
  say "building $BASE with debootstrap (python3, python3-venv)"
  rootfs=$(mktemp -d)
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  # python3-dev: the native front end builds against the interpreter's headers, which the
  # official python:*-slim images ship.
  debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,passwd bookworm \
    "$rootfs" \
    "${mirror:-http://deb.debian.org/debian}" >"$WORK/debootstrap.log" 2>&1
  tar -C "$rootfs" -c . | podman import --quiet - "$BASE" >/dev/null
  rm -rf "$rootfs"
fi

extras="serve-cpu"; [ "${IMAGE_TEST_BUILDER:-}" = 1 ] && extras="serve-cpu,train"
say "wheels for the image ($extras) into .tools/wheels"
grpcio_tools=$(sed -n 's/^ARG GRPCIO_TOOLS=//p' Dockerfile)
pybind11=$(sed -n 's/^ARG PYBIND11=//p' Dockerfile)
"$VENV/bin/pip" download -q -d .tools/wheels ".[$extras]" "$grpcio_tools" "$pybind11" setuptools 2>&1 \
  | { grep -v "is ignored: it is neither a file nor a directory" || true; }

build() {  # build TARGET TAG
  say "podman build --target $1 -t $2 (BASE_IMAGE=$BASE)"
  podman build --quiet --format docker --target "$1" --build-arg "BASE_IMAGE=$BASE" \
    --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/src/.tools/wheels -t "$2" . >/dev/null
  podman image inspect --format "$2: {{.Size}} bytes" "$2"
}
build runtime "$IMAGE"

if [ "${IMAGE_TEST_BUILDER:-}" = 1 ]; then
  build repository-builder localhost/seqserve:builder-test
  say "the builder fills a fresh named volume (tiny preset), as compose's models service does"
  podman volume rm -f seqserve-image-test-models >/dev/null 2>&1 || true
  podman volume create seqserve-image-test-models >/dev/null
  podman run --rm -v seqserve-image-test-models:/models localhost/seqserve:builder-test \
    build-repository --repository /models --preset tiny >"$WORK/builder.log" 2>&1 \
    || { tail -20 "$WORK/builder.log"; echo "image-test: FAILED: the builder" >&2; exit 1; }
  models=seqserve-image-test-models
else
  if [ ! -f "$WORK/models/translator/config.pbtxt" ]; then
    say "tiny model repository on the host (seqserve build-repository --preset tiny)"
    rm -rf "$WORK/models"
    "$VENV/bin/seqserve" build-repository --repository "$WORK/models" --preset tiny >/dev/null
  fi
  models=$PWD/$WORK/models
fi

port() { "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
grpc_port=$(port); metrics_port=$(port)
podman rm -f "$NAME" >/dev/null 2>&1 || true
cleanup() { [ "${IMAGE_TEST_KEEP:-}" = 1 ] || podman rm -f "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT
say "podman run (gRPC on 127.0.0.1:$grpc_port, metrics on 127.0.0.1:$metrics_port)"
# podman schedules health checks with systemd timers, absent here: it logs "unable to get
# systemd connection" (harmless), and `podman healthcheck run` below runs the image's
# HEALTHCHECK command by hand instead.
# The container binds 0.0.0.0, where `auto` serves with the Python front end (docs/serving.md,
# "HTTP/2 abuse"); its port is published on loopback only here, as behind a proxy, so the
# native front end is asked for.
podman run -d --name "$NAME" --health-interval=disable -p "127.0.0.1:$grpc_port:8001" -p "127.0.0.1:$metrics_port:8002" \
  -e SEQSERVE_FRONTEND=native -v "$models:/models:ro" "$IMAGE" >/dev/null

for _ in $(seq 120); do
  if "$VENV/bin/seqserve" health -u "127.0.0.1:$grpc_port" --timeout 1 >/dev/null; then break; fi
  if [ "$(podman inspect --format '{{.State.Running}}' "$NAME")" != true ]; then
    podman logs "$NAME"; echo "image-test: FAILED: the container exited" >&2; exit 1
  fi
  sleep 1
done
"$VENV/bin/seqserve" health -u "127.0.0.1:$grpc_port"
say "the image's HEALTHCHECK (seqserve health inside the container)"
podman healthcheck run "$NAME" && echo healthy

say "one forecast and one translation through the published port"
forecast=$("$VENV/bin/seqserve" forecast -u "127.0.0.1:$grpc_port" --model forecaster_gru \
  --csv examples/forecast_input.csv)
echo "$forecast" | head -4
"$VENV/bin/seqserve" translate -u "127.0.0.1:$grpc_port" "dreihundertzweiundvierzig"
curl -sf "http://127.0.0.1:$metrics_port/metrics" \
  | grep -E '^(nv_inference_request_success|seqserve_native_requests_total)\{model="(forecaster_gru|translator)"'
say "the native front end owns the port (built in the image) and runs V2 inference itself"
podman logs "$NAME" 2>&1 | grep -F "native front end"
if [ -x .tools/tritonclient/bin/python ]; then  # plain tritonclient, V2 ModelInfer
  .tools/tritonclient/bin/python examples/tritonclient_infer.py -u "127.0.0.1:$grpc_port" \
    >/dev/null
  curl -sf "http://127.0.0.1:$metrics_port/metrics" \
    | grep -E '^seqserve_native_requests_total\{model="forecaster_gru",version="1"\} [1-9]'
fi

say "runs as a non-root user, holds no torch"
[ "$(podman exec "$NAME" id -u)" = 10001 ]
if podman exec "$NAME" python3 -c "import torch" 2>/dev/null; then
  echo "image-test: FAILED: torch is importable in the serving image" >&2; exit 1
fi
podman stop --time 40 "$NAME" >/dev/null
[ "$(podman inspect --format '{{.State.ExitCode}}' "$NAME")" = 0 ]
say "PASSED (SIGTERM drained, exit code 0)"
