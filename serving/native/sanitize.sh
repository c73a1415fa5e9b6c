#!/usr/bin/env bash
# `make native-sanitize`: build the native front end with AddressSanitizer and UBSan, run the
# tests that drive it hardest (the fast path, forwarding, cancellations, reloads, drain) in
# servers that preload the sanitizer runtimes, then rebuild the release module. Opt-in (not in
# `make test`): a few minutes. Any report fails it and is printed.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
out=$(mktemp -d)
trap 'rm -rf "$out"; rm -f serving/native/_frontend.so; make --no-print-directory native >/dev/null' EXIT
flags="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -std=c++17 -fPIC \
  -Ibuild/native $($PY -m pybind11 --includes) $(pkg-config --cflags grpc++ protobuf)"
make --no-print-directory native >/dev/null  # the generated protobuf objects
for f in serving/native/*.cc; do
  # shellcheck disable=SC2086
  g++ $flags -c "$f" -o "$out/$(basename "$f" .cc).o" 2>/dev/null &
done
wait
g++ -shared -fsanitize=address,undefined "$out"/*.o build/native/inference/*.o \
  build/native/seqserve/forecast/v1/*.o \
  -o serving/native/_frontend.so $(pkg-config --libs grpc++ protobuf)
echo "native-sanitize: running the native front end's tests under ASan and UBSan"
status=0  # (a report usually fails a test too: print the reports either way)
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
ASAN_OPTIONS="detect_leaks=0:log_path=$out/asan" \
UBSAN_OPTIONS="print_stacktrace=1:log_path=$out/ubsan" \
  "$PY" -m pytest -q -p no:cacheprovider tests/serving/test_native_frontend.py \
    tests/serving/test_errors.py tests/serving/test_control.py \
    tests/serving/test_native_forecast.py tests/serving/test_forecast_api.py \
    tests/serving/test_translate_api.py tests/serving/test_server.py \
    tests/serving/test_tritonclient.py -k "not python" || status=$?
if compgen -G "$out/asan*" >/dev/null || compgen -G "$out/ubsan*" >/dev/null; then
  cat "$out"/asan* "$out"/ubsan* 2>/dev/null
  echo "native-sanitize: FAILED: sanitizer reports above" >&2
  exit 1
fi
[ "$status" -eq 0 ] || { echo "native-sanitize: FAILED: tests failed" >&2; exit "$status"; }
echo "native-sanitize: PASSED (no sanitizer reports)"
