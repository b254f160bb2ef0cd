"""Quality of a decoder on held-out real images against taef1-decode + bicubic / Lanczos x4.

    python bench/quality.py --model build/demo --out docs/quality

For each image the reference is a square centre crop at the image's own resolution (the largest multiple of 32
that fits, at most 512: an upscaled reference would be blurred and favour the interpolating baselines); its 4x
smaller version is encoded with taef1 into a FLUX.1 latent (16x16x16 for 512). Reported: PSNR and SSIM against
the reference, PIQE (no-reference, lower is better, from `pypiqe`), and decodes of partially denoised latents
(latent_sigma 0, 0.2, 0.4). Writes quality.md and a picture.

PIQE scores 16x16 blocks on a grid fixed at the top-left corner, the same grid as the decoder's 16-pixel patches,
so it is also reported with the image shifted by 8 pixels, a grid straddling the patch seams: a score that held only
on the aligned grid would be an artefact. "Seams" looks for the patch grid: the mean step between neighbouring
pixels at each position modulo 16, the largest over the median; about 1 for a photograph, above 1 where a decoder
draws edges or lines on a 16-pixel grid.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pid_sdk  # noqa: E402
from pid_sdk.checkpoints import LoadedModel  # noqa: E402
from pid_sdk.tae import SHARED_TAE_DIR, TinyAutoencoder  # noqa: E402
from training.data import DEMO_HELD_OUT, centre_crop, downsample, named_image, to_tensor  # noqa: E402
from training.trainer import is_run_folder, load_run_ema  # noqa: E402


# Real photographs outside the demo's training pool: chelsea (held out on purpose), grey or small ones the pool skips
HELD_OUT = DEMO_HELD_OUT + ("opencv-doc.messi5", "opencv-doc.butterfly", "skimage.camera")


def load_decoder(path: str) -> pid_sdk.Decoder:
    if is_run_folder(path):  # a training run folder: its EMA weights
        cfg, model = load_run_ema(path)
        return pid_sdk.Decoder.from_model(LoadedModel(model, cfg, "run", path, []), device="cpu")
    return pid_sdk.Decoder.load(path, device="cpu")


def reference_and_latent(name: str, tae: TinyAutoencoder, size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference crop [1, 3, side, side] in [0, 1] (native resolution unless `size`) and the taef1 latent of its
    4x smaller version."""
    return crop_and_encode(named_image(name), tae, size)


def crop_and_encode(img: np.ndarray, tae: TinyAutoencoder, size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    side = size or min(512, min(img.shape[:2]) // 32 * 32)
    hr = centre_crop(to_tensor(img), side, side)[None]
    return hr, tae.encode(downsample(hr, 4))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] in [0, 1] -> [H, W, 3] 8-bit pixels."""
    return (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def taef1_image(tae: TinyAutoencoder, latent: torch.Tensor) -> Image.Image:
    """taef1's decode rounded to 8 bits: the image the baselines upscale with PIL."""
    return Image.fromarray(to_uint8(tae.decode(latent)))


def metrics(img: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    return {"psnr": peak_signal_noise_ratio(ref, img, data_range=255),
            "ssim": structural_similarity(ref, img, channel_axis=2, data_range=255),
            "piqe": piqe_score(img), "piqe_shifted": piqe_score(img, offset=8), "seams": seam_ratio(img)}


def piqe_score(img: np.ndarray, offset: int = 0) -> float:
    """PIQE of the grey image without its first `offset` rows and columns (NaN without `pypiqe`)."""
    try:
        from pypiqe import piqe
    except ImportError:
        return float("nan")
    return float(piqe(np.asarray(Image.fromarray(img[offset:, offset:]).convert("L")))[0])


def seam_ratio(img: np.ndarray, period: int = 16) -> float:
    """The mean step between neighbouring pixels at each position modulo `period` (rows and columns together): the
    largest over the median. About 1 for a photograph; a grid of edges or lines at any phase raises it."""
    g = img.astype(np.float64)
    steps = np.abs(np.diff(g, axis=1)).mean(axis=(0, 2)), np.abs(np.diff(g, axis=0)).mean(axis=(1, 2))
    by_phase = sum(s[: len(s) // period * period].reshape(-1, period).mean(axis=0) for s in steps)  # [period]
    return float(by_phase.max() / max(np.median(by_phase), 1e-9))


def _tile_row(tiles: list[np.ndarray], side: int = 512) -> np.ndarray:
    """Tiles of one image side by side, each centred on a white side x side square (pixels stay 1:1)."""
    padded = []
    for t in tiles:
        canvas = np.full((side, side, 3), 255, np.uint8)
        top, left = (side - t.shape[0]) // 2, (side - t.shape[1]) // 2
        canvas[top:top + t.shape[0], left:left + t.shape[1]] = t
        padded.append(canvas)
    return np.concatenate(padded, axis=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--images", nargs="+", default=list(HELD_OUT))
    p.add_argument("--out", default="docs/quality")
    p.add_argument("--size", type=int, default=0, help="reference side (default: native, see above)")
    p.add_argument("--held-out", nargs="*", default=list(HELD_OUT), help="images the model never saw")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dec = load_decoder(args.model)
    tae = TinyAutoencoder(SHARED_TAE_DIR, "taef1")
    rows, tiles = [], []
    for name in args.images:
        hr, latent = reference_and_latent(name, tae, args.size)
        side = hr.shape[-1]
        ref = to_uint8(hr)
        small = taef1_image(tae, latent)
        candidates = {"taef1 + bicubic x4": np.asarray(small.resize((side, side), Image.BICUBIC)),
                      "taef1 + Lanczos x4": np.asarray(small.resize((side, side), Image.LANCZOS))}
        gen = torch.Generator().manual_seed(0)
        for s in (0.0, 0.2, 0.4):
            noisy = (1 - s) * latent + s * torch.randn(latent.shape, generator=gen)
            candidates[f"PiD demo, latent_sigma {s}"] = dec.decode(noisy, latent_space="flux1", latent_sigma=s,
                                                                   seed=0, output="numpy")[0]
        for label, decoded in candidates.items():
            rows.append({"image": name + ("" if name in args.held_out else " (in training)"), "size": side,
                         "method": label, **metrics(decoded, ref)})
        tiles.append(_tile_row([ref, *candidates.values()]))
    Image.fromarray(np.concatenate(tiles, axis=0)).save(out / "comparison.jpg", quality=92)  # a PNG is ~12 MB
    lines = [f"Model: `{args.model}` ({dec.config.name}); {date.today()}; CPU; 4 steps, seed 0.",
             "Columns of comparison.jpg: reference crop, " + ", ".join(candidates), "",
             "| image | size | method | PSNR dB | SSIM | PIQE (lower better) | PIQE, 8 px shifted | seams |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['image']} | {r['size']} | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['piqe']:.1f} | "
              f"{r['piqe_shifted']:.1f} | {r['seams']:.2f} |" for r in rows]
    (out / "quality.md").write_text("\n".join(lines) + "\n")
    (out / "quality.json").write_text(json.dumps(rows, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
