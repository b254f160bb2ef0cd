#!/usr/bin/env bash
# Set-up, the C bindings, then the CPU test suite (GPU / TensorRT tests skip with their reason).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
bash bindings/build.sh  # the C ABI and its sample (tests/test_c_abi.py)
.venv/bin/python -m pytest -q "$@"
