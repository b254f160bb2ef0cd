#!/usr/bin/env bash
# Continue the embedded demo model's training on one CUDA GPU in a single device call, and return the result.
#   here:    python training/demo/pack_gpu_data.py                   (build/carry: the training pool and taef1, ~21 MiB)
#   device:  bash training/demo/gpu_train_demo.sh                    (carry build/carry; timeout_s 600; ends by TOTAL_S)
#   back:    $OUT/half-demo-flux1/ and $OUT/demo-flux1/ (bf16 artefacts after half the rollout and all of it; the
#            device tool returns files up to 16 MiB, so a larger model.safetensors comes in parts: rejoin them with
#            `cat model.safetensors.part* > model.safetensors`), $OUT/train.log and $OUT/gpu_tests.log (TESTS=0: no
#            tests); judge the artefacts here with bench/quality.py --model
# From the shipped weights: FLOW_MIN minutes of rectified flow at lr 2e-4, then rollout until TOTAL_S seconds after
# the start less a margin for shipping, with the lr decaying to a tenth over the steps the flow phase's rate predicts
# (a rollout step costs about ROLL_COST flow steps) and at a tenth after them (a rollout faster than predicted uses
# the time left rather than ending early), with mostly clean latents, as the shipped model's last phase
# (docs/quality.md). bf16 autocast, batch BATCH at 512x512 (smaller crops get as many pixels). Meanwhile the marked
# GPU tests run beside it. GROW="patch_depth=16" deepens the shipped model first (training/grow.py: the same
# function, new blocks free to learn; past 30 MiB of weights the two artefacts' parts and the logs exceed the 8 files
# the device tool returns). INIT=build/carry/init starts from another artefact instead of the
# shipped weights (training/demo/pack_gpu_data.py --init; e.g. a model grown and trained on the CPU). CARRY names the
# pack's folder. COMPILE=1 trains through torch.compile (one compile per crop size and grad mode in each of the
# three training calls; untried on a GPU: docs/training.md). AUGMENT=1 turns, mirrors and recolours the crops
# (train_demo.py --augment). Nothing is installed. A CPU dry run: DEVICE=cpu BATCH=2
# FLOW_MIN=0.2 TOTAL_S=120 TESTS=0.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out} RUN=${RUN:-/tmp/demo_gpu} FLOW_MIN=${FLOW_MIN:-3} TOTAL_S=${TOTAL_S:-510} BATCH=${BATCH:-32}
ROLL_COST=${ROLL_COST:-1.5} DEVICE=${DEVICE:-cuda} GROW=${GROW:-} INIT=${INIT:-pid_sdk/data/demo-flux1}
TESTS=${TESTS:-1} CARRY=${CARRY:-build/carry} COMPILE=${COMPILE:-0} AUGMENT=${AUGMENT:-0}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p "$OUT"
log() { (grep -v -i warn || true) | tee -a "$OUT/train.log"; }
ship() {  # the run's EMA as a bf16 artefact in $OUT/$1, its weights in parts the device tool returns
  python3 training/demo/ship_demo.py "$RUN" --out "$RUN.ship" | log
  mkdir -p "$OUT/$1" && cp "$RUN.ship/manifest.json" "$OUT/$1/"
  split -b 15M -d "$RUN.ship/model.safetensors" "$OUT/$1/model.safetensors.part" && rm -r "$RUN.ship"
}
[ "$DEVICE" != cuda ] || nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | log
if [ "$DEVICE" = cuda ] && [ "$TESTS" = 1 ]; then
  timeout 240 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -rA >"$OUT/gpu_tests.log" 2>&1 &
fi
common=(--out "$RUN" --data "$CARRY/images" --tae-dir "$CARRY/tae" --device "$DEVICE" --sizes 256 384 512
        --batch "$BATCH")
[ "$COMPILE" = 0 ] || common+=(--compile)
[ "$AUGMENT" = 0 ] || common+=(--augment)
grow=()
[ -z "$GROW" ] || read -r -a grow <<<"--grow $GROW"
python3 training/demo/train_demo.py "${common[@]}" --init "$INIT" "${grow[@]}" --lr 2e-4 \
  --minutes "$FLOW_MIN" 2>&1 | log
flow=$(python3 -c "import torch; print(torch.load('$RUN/trainer_state.pt', weights_only=True)['step'])")
minutes=$(python3 -c "print(max(0.5, ($TOTAL_S - $SECONDS - 60) / 60))")
end=$(python3 -c "print($flow + 1 + int($flow * $minutes / $FLOW_MIN / $ROLL_COST))")
half=$(( (flow + end) / 2 ))
echo "flow: $flow steps; rollout: $minutes min, the lr at its floor from step $end (artefact at $half)" | log
rollout() {  # one lr schedule over both halves: the second resumes the first
  python3 training/demo/train_demo.py "${common[@]}" --resume --objective rollout --lr 1e-4 --lr-decay "$flow" "$end" \
    --latent-noise-prob 0.1 --latent-dropout 0.02 "$@" 2>&1 | log
}
rollout --until-step "$half" --minutes "$(python3 -c "print($minutes / 2)")"
ship half-demo-flux1
rollout --minutes "$(python3 -c "print(max(0.5, ($TOTAL_S - $SECONDS - 30) / 60))")"  # past $end: the lr's floor
ship demo-flux1
echo "finished after $SECONDS s" | log
wait || true
