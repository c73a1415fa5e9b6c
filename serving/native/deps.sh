#!/usr/bin/env bash
# Build dependencies of the native front end, from Debian: gRPC C++ and protobuf (headers,
# libraries, protoc), a C++ compiler and pkg-config. (pybind11 comes from the venv.)
set -euo pipefail
need=()
pkg-config --exists grpc++ 2>/dev/null || need+=(libgrpc++-dev libprotobuf-dev)
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v g++ >/dev/null || need+=(g++)
command -v pkg-config >/dev/null || need+=(pkg-config)
if [ ${#need[@]} -gt 0 ]; then
  echo "native: apt-get install ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >/dev/null
fi
