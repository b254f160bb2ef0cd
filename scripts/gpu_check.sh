#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one call: the marked GPU tests, then the latency benchmark.
# Runs on a GPU host with torch installed (no pid-sdk install needed). Results go to $OUT (default ./out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -m gpu tests -p no:cacheprovider -rA 2>&1 | tee "$OUT/gpu_tests.log"
# budget: the tests take about 2 minutes; the benchmark stops starting measurements after 6 more
python3 bench/latency.py --budget-s 360 --json "$OUT/latency.json" --markdown "$OUT/latency.md" 2>&1 \
  | grep -v -i "warn" | tee "$OUT/latency.log"
