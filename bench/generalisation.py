"""Does a decoder read photographs it has not seen as well as those it trained on?

    python bench/generalisation.py --model pid_sdk/data/demo-flux1 --markdown gap.md

Each image is decoded the way bench/quality.py decodes its held-out ones (a square centre crop at the image's own
resolution, its 4x smaller version encoded with taef1, 4 steps, seed 0), and the decode's PSNR is compared with
taef1 + bicubic x4 on the same latent. The gap (PiD minus bicubic, dB) is averaged over two groups:

- seen: `pool` (the demo's package photographs, without the held-out ones; with `--wallpapers` the Debian
  wallpapers too) or a folder of the images a run trained on;
- unseen: `more` (the 19 photographs of `training/data.py: MORE_SOURCES`, outside the pool of the demo models
  shipped until 2026-11-27's nineteenth stop; the one shipped since has trained on them) or a folder of images the
  run never saw.

A model that has learnt its pictures rather than the latent shows a mean gap on the seen group well above the
unseen one; the difference of the two means is the generalisation gap.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality import crop_and_encode, load_decoder, taef1_image, to_uint8  # noqa: E402

from pid_sdk.errors import InputError  # noqa: E402
from pid_sdk.tae import SHARED_TAE_DIR, TinyAutoencoder  # noqa: E402
from training.data import DEMO_HELD_OUT, MORE_SOURCES, folder_images, package_images, source_images  # noqa: E402


def group_images(spec: str, wallpapers: bool = False) -> dict[str, np.ndarray]:
    """`pool`, `more` or a folder of images, by name."""
    if spec == "pool":
        return package_images(exclude=DEMO_HELD_OUT, wallpapers=wallpapers)
    if spec == "more":
        images, missing = source_images(MORE_SOURCES)
        if missing:
            raise InputError("Some of the photographs of --unseen more are not installed here.",
                             received="missing: " + "; ".join(what for what, _ in missing),
                             expected=f"the {len(MORE_SOURCES)} sources of training/data.py: MORE_SOURCES",
                             fix=f"install them ({'; '.join(dict.fromkeys(i for _, i in missing))}), or pass "
                                 "--unseen FOLDER")
        return images
    return folder_images(spec)


def gap_row(dec, tae: TinyAutoencoder, name: str, img: np.ndarray, group: str) -> dict:
    hr, latent = crop_and_encode(img, tae)
    side = hr.shape[-1]
    ref = to_uint8(hr)
    pid = dec.decode(latent, latent_space="flux1", seed=0, output="numpy")[0]
    bicubic = np.asarray(taef1_image(tae, latent).resize((side, side), Image.BICUBIC))
    row = {"image": name, "group": group, "size": side, "pid_psnr": peak_signal_noise_ratio(ref, pid, data_range=255),
           "bicubic_psnr": peak_signal_noise_ratio(ref, bicubic, data_range=255)}
    return {**row, "gap": row["pid_psnr"] - row["bicubic_psnr"]}


def summary(rows: list[dict]) -> dict[str, float]:
    means = {g: float(np.mean([r["gap"] for r in rows if r["group"] == g])) for g in ("seen", "unseen")
             if any(r["group"] == g for r in rows)}
    if len(means) == 2:
        means["generalisation_gap"] = means["seen"] - means["unseen"]
    return means


def markdown(model: str, rows: list[dict], means: dict[str, float]) -> str:
    lines = [f"Model: `{model}`; 4 steps, seed 0; gap = PiD minus taef1 + bicubic x4, PSNR dB.", "",
             "| image | group | size | PiD | bicubic | gap |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['image']} | {r['group']} | {r['size']} | {r['pid_psnr']:.2f} | {r['bicubic_psnr']:.2f} | "
              f"{r['gap']:+.2f} |" for r in rows]
    lines += [""] + [f"- mean gap, {g}: {means[g]:+.2f} dB" for g in ("seen", "unseen") if g in means]
    if "generalisation_gap" in means:
        lines.append(f"- generalisation gap (seen minus unseen): {means['generalisation_gap']:+.2f} dB")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="an SDK artefact or a training run folder (its EMA)")
    p.add_argument("--seen", default="pool", help="pool, or a folder of the images the model trained on")
    p.add_argument("--unseen", default="more", help="more, or a folder of images the model never saw")
    p.add_argument("--wallpapers", action="store_true", help="with --seen pool: the Debian wallpapers too")
    p.add_argument("--limit", type=int, default=0, help="at most this many images of each group (0: all)")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    args = p.parse_args(argv)
    dec, tae = load_decoder(args.model), TinyAutoencoder(SHARED_TAE_DIR, "taef1")
    rows = []
    for group, spec in (("seen", args.seen), ("unseen", args.unseen)):
        try:
            images = list(group_images(spec, args.wallpapers).items())
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for name, img in images[: args.limit or None]:
            rows.append(gap_row(dec, tae, name, img, group))
            print(f"{group:6s} {name:40s} gap {rows[-1]['gap']:+.2f} dB", flush=True)
    means = summary(rows)
    text = markdown(args.model, rows, means)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "rows": rows, "means": means}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
