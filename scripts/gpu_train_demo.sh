#!/usr/bin/env bash
# Continue the embedded demo model's training on one CUDA GPU in a single device call, and return the result.
#   here:    python scripts/pack_gpu_data.py                   (build/carry: the training pool and taef1, ~27 MiB)
#   device:  bash scripts/gpu_train_demo.sh                    (carry build/carry; about FLOW_MIN + ROLL_MIN + 2 min)
#   back:    $OUT/demo-flux1/ (bf16 artefact), $OUT/train.log; judge it here with bench/quality.py --model
# From the shipped weights: FLOW_MIN minutes of rectified flow at lr 2e-4, then a rollout phase sized to ROLL_MIN
# minutes at the flow phase's measured rate (a rollout step costs about two flow steps) with the lr decaying to a
# tenth and mostly clean latents, as the shipped model's last phase (docs/quality.md). bf16 autocast, batch BATCH
# at 512x512 (smaller crops get as many pixels). Nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out} RUN=${RUN:-/tmp/demo_gpu} FLOW_MIN=${FLOW_MIN:-4} ROLL_MIN=${ROLL_MIN:-3} BATCH=${BATCH:-16}
DEVICE=${DEVICE:-cuda}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p "$OUT"
[ "$DEVICE" != cuda ] || nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/train.log"
common=(--out "$RUN" --data build/carry/images --tae-dir build/carry/tae --device "$DEVICE" --sizes 256 384 512
        --batch "$BATCH")
python3 scripts/train_demo.py "${common[@]}" --init pid_sdk/data/demo-flux1 --lr 2e-4 --minutes "$FLOW_MIN" \
  2>&1 | (grep -v -i warn || true) | tee -a "$OUT/train.log"
flow=$(python3 -c "import torch; print(torch.load('$RUN/trainer_state.pt', weights_only=True)['step'])")
end=$(( flow + flow * ROLL_MIN / FLOW_MIN / 2 + 1 ))
python3 scripts/train_demo.py "${common[@]}" --resume --objective rollout --lr 1e-4 --lr-decay "$flow" "$end" \
  --latent-noise-prob 0.1 --latent-dropout 0.02 --until-step "$end" --minutes "$(( ROLL_MIN + 2 ))" \
  2>&1 | (grep -v -i warn || true) | tee -a "$OUT/train.log"
python3 scripts/ship_demo.py "$RUN" --out "$OUT/demo-flux1" | tee -a "$OUT/train.log"
