#!/usr/bin/env bash
# Speed variants of the PyTorch backend on one GPU, in one call: the baseline, bf16 weights, bf16 + torch.compile.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for v in "fp32:" "bf16:" "bf16:--compile"; do
  w=${v%%:*}; c=${v#*:}; tag="$w${c:+-compiled}"
  timeout 240 python3 bench/latency.py --sizes 1024 2048 --runs 5 --warmup 2 --weights "$w" $c \
    --json "$OUT/latency-$tag.json" --markdown "$OUT/latency-$tag.md" 2>&1 | grep -v Warning | tail -5
done
