#!/usr/bin/env bash
# Set-up on a fresh machine: a virtual environment in .venv with torch 2.13.0 (CPU) and pid-sdk.
#   bash scripts/setup.sh          the runtime only (torch, numpy, safetensors, Pillow, tqdm): what the demo needs
#   bash scripts/setup.sh test     plus the test extras (ONNX Runtime, TensorRT-RTX, modelopt, hypothesis, ...)
# Idempotent: a second run only checks. torch is installed first, alone, so no other request can pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${1:-}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
fi
.venv/bin/python -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, pid_sdk; print(f'pid-sdk {pid_sdk.__version__}, torch {torch.__version__}')"
