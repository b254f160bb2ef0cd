"""Rewrite a training run made on raw VAE latents so that it takes the normalised latent the LDM produces.

    python scripts/renormalize_run.py build/demo --space flux1

The demo run's first 4400 steps were trained on raw taef1 output; PiD's contract (spec 5.3) is the normalised
latent. The model and EMA weights are rewritten in place (the adapter's first convolution absorbs the affine map,
see `fold_latent_normalization`); the optimizer state is kept. A marker file refuses a second application.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pid_sdk.latents import get_latent_space  # noqa: E402
from training.trainer import fold_latent_normalization  # noqa: E402

MARKER = "renormalized.json"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("run", help="a run folder written by Trainer.save")
    p.add_argument("--space", default="flux1")
    args = p.parse_args()
    run, space = Path(args.run), get_latent_space(args.space)
    if (run / MARKER).exists():
        print(f"{run} was already rewritten: {(run / MARKER).read_text()}", file=sys.stderr)
        return 2
    for name in ("model.safetensors", "ema.safetensors"):
        state = fold_latent_normalization(load_file(str(run / name)), space)
        save_file({k: v.contiguous() for k, v in state.items()}, str(run / name))
    step = torch.load(run / "trainer_state.pt", weights_only=True)["step"]
    (run / MARKER).write_text(json.dumps({"space": space.name, "at_step": step}))
    print(f"{run}: model and EMA now take normalised {space.name} latents (rewritten at step {step})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
