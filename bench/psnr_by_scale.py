"""At which scale a decoder loses PSNR: its decode and the baseline compared after box-downsampling by 1, 2, ... 16.

    python bench/psnr_by_scale.py --model pid_sdk/data/demo-flux1

For each held-out image (prepared as in bench/quality.py) the 4-step decode (seed 0), the mean of `--samples`
decodes (seeds 0..K-1: near the model's posterior mean, so what is left of its error is bias, not sampling noise)
and taef1 + bicubic x4 are compared with the reference after an f x f box average. A gap that grows with f is
error in the coarse structure that the latent determines; a gap only at f = 1 is fine detail.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from denoise_by_sigma import psnr  # noqa: E402
from quality import HELD_OUT, load_decoder, reference_and_latent, taef1_image  # noqa: E402

from pid_sdk.tae import SHARED_TAE_DIR, TinyAutoencoder  # noqa: E402


def bicubic_x4(tae: TinyAutoencoder, latent: Tensor) -> Tensor:
    """The taef1 + bicubic x4 baseline of bench/quality.py as [1, 3, H, W] in [-1, 1]."""
    small = taef1_image(tae, latent)
    up = np.array(small.resize((small.width * 4, small.height * 4), Image.BICUBIC))  # a writable copy
    return torch.from_numpy(up).permute(2, 0, 1)[None].float() / 127.5 - 1


def psnr_by_scale(image: Tensor, reference: Tensor, factors: list[int]) -> list[float]:
    return [psnr(F.avg_pool2d(image, f), F.avg_pool2d(reference, f)) if f > 1 else psnr(image, reference)
            for f in factors]


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--images", nargs="+", default=list(HELD_OUT))
    p.add_argument("--factors", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--samples", type=int, default=8, help="decodes averaged for the posterior-mean row")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    decoder, tae, result = load_decoder(args.model), TinyAutoencoder(SHARED_TAE_DIR, "taef1"), {}
    print("| image | method | " + " | ".join(f"1/{f}" for f in args.factors) + " |")
    print("|---|---|" + "---|" * len(args.factors))
    for name in args.images:
        hr, latent = reference_and_latent(name, tae)
        decodes = [decoder.decode(latent, latent_space="flux1", seed=s) for s in range(args.samples)]
        methods = {"taef1 + bicubic x4": bicubic_x4(tae, latent), "PiD, seed 0": decodes[0],
                   f"PiD, mean of {args.samples}": torch.stack(decodes).mean(0)}
        result[name] = {label: psnr_by_scale(img, hr * 2 - 1, args.factors) for label, img in methods.items()}
        for label, row in result[name].items():
            print(f"| {name} | {label} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
