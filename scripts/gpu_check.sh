#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one call of under 9 minutes: the latency benchmark (the issue's targets first),
# attention alone at a decode's shapes, the memory estimate, then the marked GPU tests. Runs on a GPU host with torch installed (no pid-sdk install needed).
# Results go to $OUT (default ./out); each step writes as it goes, so a step cut short keeps what it measured.
# A dry run of the harness on the CPU:
#   BENCH="--tiny" SIZES="128 64" LARGE=256 WINDOWED=256:128 MEMORY="--preset tiny --device cpu --cases 128 256/64" \
#     bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out} BENCH=${BENCH:-} SIZES=${SIZES:-2048 1024} LARGE=${LARGE:-4096}
WINDOWED=${WINDOWED:-4096:2048 8192:2048}
MEMORY=${MEMORY:---preset pid-2k --device cuda --cases 1024 2048 4096/2048}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1

until_mark() {  # until_mark SECONDS command...: run it with what is left until that mark, or skip it
  local left=$(( $1 - SECONDS )); shift
  if [ "$left" -lt 20 ]; then echo "skipped (time): $*"; return 0; fi
  timeout "$left" "$@"
}
bench() { python3 bench/latency.py $BENCH "$@" 2>&1 | grep -v -i "warn" | tee -a "$OUT/latency.log"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
# wheels carried in .whl/ (the GPU host reaches no registry): torchao (speed="fp8-torchao") and
# nvidia-cudnn-frontend (Speed(fp8_attention=True)); see docs/benchmarks.md for the pip download line
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-deps .whl/*.whl 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"
fi
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" | tee -a "$OUT/gpu.txt"
# TensorRT-RTX's libraries (228 MB) cannot travel with the tree: record what this host has; where a library is
# present, tests/test_tensorrt_runtime.py (in the GPU tests below) builds and runs engines against PyTorch
for lib in tensorrt_rtx tensorrt; do
  python3 -c "import $lib as m; print('$lib', m.__version__)" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"
done

# the first size in every mode is the headline target; no new measurement starts after --budget-s
export -f bench; export OUT BENCH WINDOWED
# a 2048² mode compiles for about a minute: the baseline first, then the new settings by what they may win
until_mark 290 bash -c "bench --sizes ${SIZES%% *} --modes fast-cudnn fp8-all fp8-attention fast-cudnn-split \
  fp8-torchao fast-autotune fp8 fast compile eager --breakdown-sizes ${SIZES%% *} --budget-s 200 \
  --json $OUT/latency.json --markdown $OUT/latency.md"
until_mark 350 bash -c "bench --sizes ${SIZES#* } --modes fp8-all fast-cudnn --budget-s 30 \
  --json $OUT/latency-small.json --markdown $OUT/latency-small.md"
until_mark 380 bash -c "python3 bench/attention.py $BENCH --json $OUT/attention.json 2>&1 | grep -v -i warn \
  | tee -a $OUT/latency.log"
# the whole 4096² image, then 4096² and 8192² as windows of 2048² (pid_sdk/windows.py): time and peak memory
until_mark 490 bash -c "bench --sizes $LARGE --modes fp8-all --windowed $WINDOWED --runs 3 --warmup 1 \
  --json $OUT/latency-large.json --markdown $OUT/latency-large.md"
# the memory estimate (max_memory= keeps to it) against torch.cuda.max_memory_allocated on the 1.3B model
until_mark 510 bash -c "python3 bench/memory.py $MEMORY --json $OUT/memory.json 2>&1 | grep -v -i warn \
  | tee -a $OUT/latency.log"
until_mark 540 python3 -m pytest -q -m gpu tests -p no:cacheprovider -rA --show-capture=no 2>&1 | tee "$OUT/gpu_tests.log"
echo "gpu_check: ${SECONDS} s"
