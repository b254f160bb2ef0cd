"""Where a decoder loses quality: its one-call x0 prediction at each noise level the 4-step sampler visits.

    python bench/denoise_by_sigma.py --model pid_sdk/data/demo-flux1

For each held-out image (prepared as in bench/quality.py) the reference is noised to sigma with fixed noise and
the model is called once; reported is the PSNR of x0 = x - sigma v against the reference, at full resolution and
after an 8x box downsampling (the low frequencies, which the latent carries). A prediction that is good at low
resolution but poor at full resolution at high sigma is a model that cannot reproduce the noise it was given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from quality import HELD_OUT, load_decoder, reference_and_latent  # noqa: E402

from pid_sdk.compare import compare  # noqa: E402
from pid_sdk.sampling import STUDENT_SIGMAS  # noqa: E402
from pid_sdk.tae import SHARED_TAE_DIR, TinyAutoencoder  # noqa: E402


def psnr(image: Tensor, reference: Tensor) -> float:
    return compare("x0", image, reference).psnr  # images in [-1, 1]


@torch.no_grad()
def x0_psnr_by_sigma(decoder, x0: Tensor, latent: Tensor, sigmas: list[float], seed: int = 0) -> list[dict]:
    b = decoder.config.backbone
    side = x0.shape[-1]
    step = decoder.runtime.backend(text=torch.zeros(1, b.txt_max_length, b.txt_embed_dim), latent=latent,
                                   latent_sigma=torch.zeros(1), height=side, width=side)
    gen, rows = torch.Generator().manual_seed(seed), []
    for sigma in sigmas:
        x = (1 - sigma) * x0 + sigma * torch.randn(x0.shape, generator=gen)
        pred = (x - sigma * step.infer({"x": x, "sigma": sigma})["v"].float()).clamp(-1, 1)
        rows.append({"sigma": sigma, "psnr": psnr(pred, x0), "psnr_8x_down": psnr(F.avg_pool2d(pred, 8),
                                                                                F.avg_pool2d(x0, 8))})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--images", nargs="+", default=list(HELD_OUT))
    p.add_argument("--sigmas", type=float, nargs="+", default=[s for s in STUDENT_SIGMAS if s > 0])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    decoder, tae, result = load_decoder(args.model), TinyAutoencoder(SHARED_TAE_DIR, "taef1"), {}
    print("| image | " + " | ".join(f"sigma {s}" for s in args.sigmas) + " |")
    print("|---|" + "---|" * len(args.sigmas))
    for name in args.images:
        hr, latent = reference_and_latent(name, tae)
        rows = x0_psnr_by_sigma(decoder, hr * 2 - 1, latent, args.sigmas)
        result[name] = rows
        print(f"| {name} | " + " | ".join(f"{r['psnr']:.2f} ({r['psnr_8x_down']:.2f})" for r in rows) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
