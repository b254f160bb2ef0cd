#!/usr/bin/env bash
# Build the C ABI (bindings/build/libpid_sdk.so) and the C sample (bindings/build/pid_decode) against the libtorch of
# the torch installed in .venv (bash scripts/setup.sh first). Installs the Debian packages it needs when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v g++ >/dev/null || missing+=(g++)
[ -f /usr/include/nlohmann/json.hpp ] || missing+=(nlohmann-json3-dev)
[ -f /usr/include/png.h ] || missing+=(libpng-dev)
[ -f /usr/include/openssl/evp.h ] || missing+=(libssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "error: the build needs ${missing[*]}" >&2
    echo "  fix: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  apt-get install -y -q "${missing[@]}" >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
fi
prefix=$("$PY" -c "import torch.utils; print(torch.utils.cmake_prefix_path)")
mkdir -p bindings/build
if ! cmake -S bindings -B bindings/build -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release \
    > bindings/build/configure.log 2>&1; then
  cat bindings/build/configure.log >&2
  exit 1
fi
if ! cmake --build bindings/build -j "$(nproc)" > bindings/build/build.log 2>&1; then
  cat bindings/build/build.log >&2
  exit 1
fi
grep -i "warning" bindings/build/build.log >&2 || true
echo "built bindings/build/libpid_sdk.so and bindings/build/pid_decode"
