#!/usr/bin/env bash
# The main job: decode the bundled sample latent (a real FLUX.1 latent of a photograph) into a 512x512 PNG.
# Until the project's own trained model ships (issue 4), this uses the `tiny` preset with seeded random weights:
# the pipeline runs end to end, but the picture is noise-like, not the photograph.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/pid-sdk decode samples/sample_latent_flux1.safetensors --preset tiny --latent-space flux1 -o demo.png
