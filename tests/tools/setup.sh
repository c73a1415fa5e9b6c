#!/usr/bin/env bash
# Test set-up that the project venv cannot hold (run by `make test`; idempotent and quick when
# everything is already there):
# - Debian packages: prometheus (a real scraper for the metrics tests), docker-compose (v1, to
#   validate compose files without an engine), libb64-0d (perf_analyzer's runtime dependency);
# - .tools/tritonclient: the latest tritonclient[grpc,http], a real V2 client of both protocols.
#   It needs protobuf<7 and its generated `inference.*` messages clash with ours, so it lives in
#   its own venv and the tests drive it as a subprocess;
# - .tools/perf_analyzer: tritonclient[grpc]==2.51.0, the newest whose bundled perf_analyzer
#   binary runs on glibc 2.36, plus the CUDA runtime library the binary links against;
# - .tools/triton, .tools/kube, .tools/serving-only: below.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3.11}
export PIP_DISABLE_PIP_VERSION_CHECK=1

need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v docker-compose >/dev/null || need+=(docker-compose)
ldconfig -p | grep -q 'libb64.so.0d' || need+=(libb64-0d)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

tool_venv() {  # tool_venv DIR STAMP PACKAGES...
  local dir=$1 stamp=$2; shift 2
  if [ "$(cat "$dir/.stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "setup: $dir ($*)"
    rm -rf "$dir"
    "$PYTHON" -m venv "$dir"
    "$dir/bin/pip" install -q --no-compile "$@"
    echo "$stamp" > "$dir/.stamp"
  fi
}
tool_venv .tools/tritonclient "tritonclient-2.73.0+http" 'tritonclient[grpc,http]==2.73.0'
tool_venv .tools/perf_analyzer "tritonclient-2.51.0+cudart-12.9.79" \
  'tritonclient[grpc]==2.51.0' 'nvidia-cuda-runtime-cu12==12.9.79'
# .tools/triton: the real Triton server (the `tritonserver` 2.51 binary, with its libraries, that
# PyTriton's wheel ships; its Python package is not used, so no dependencies), for the
# differential tests of tests/serving/test_triton_parity.py.
tool_venv .tools/triton "pytriton-0.7.0" --no-deps 'nvidia-pytriton==0.7.0'
# .tools/kube: offline checks of the Kubernetes manifests: kubernetes-validate (the built-in
# kinds against their JSON schemas) and the kserve SDK, whose models tests/deploy/strict_kserve.py
# walks field by field (KServe's CRDs have no schema that kubernetes-validate ships).
tool_venv .tools/kube "kube-1" 'kubernetes-validate==1.37.0' 'kserve==0.21.0'
# .tools/serving-only: seqserve with only its serving dependencies (no torch, no onnx), to prove
# that `seqserve serve` and the client commands run in the serving container's environment.
tool_venv .tools/serving-only "serving-$(sha256sum pyproject.toml | cut -c1-16)" -e '.[serve-cpu]'
