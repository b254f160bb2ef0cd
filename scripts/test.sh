#!/usr/bin/env bash
# Set-up, then the CPU test suite (GPU / TensorRT tests skip with their reason).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/python -m pytest -q "$@"
