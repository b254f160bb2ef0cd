#!/usr/bin/env bash
# The C++ readers of untrusted bytes (latent files, engine manifests) and their fuzz driver, built with
# AddressSanitizer and UBSan into bindings/build/fuzz/fuzz_readers (g++; no libtorch library is linked, only the
# header-only c10 number types). Run: bindings/build/fuzz/fuzz_readers ITERATIONS SEED.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
torch_include=$("$PY" -c "import torch.utils.cpp_extension as c; print(c.include_paths()[0])")
mkdir -p bindings/build/fuzz
g++ -std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all \
  -I bindings/cpp -isystem "$torch_include" bindings/fuzz/fuzz_readers.cpp \
  bindings/cpp/files.cpp bindings/cpp/latent_file.cpp bindings/cpp/manifest.cpp bindings/cpp/sha256.cpp \
  -lcrypto -o bindings/build/fuzz/fuzz_readers
echo "built bindings/build/fuzz/fuzz_readers"
