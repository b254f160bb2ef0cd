#!/usr/bin/env bash
# The main job: decode the bundled sample latent (a real FLUX.1 latent of a held-out photograph, 16x16x16) into a
# 512x512 PNG with the embedded demo model (pid_sdk/data/demo-flux1: 11.5M parameters, an early model: the picture
# follows the photograph, blurred, with its patch grid showing; see docs/quality.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/pid-sdk decode samples/sample_latent_flux1.safetensors --model pid_sdk/data/demo-flux1 -o demo.png
