"""Write the demo's training pool and taef1 into one folder, for a machine without the packages.

    python training/demo/pack_gpu_data.py --out build/carry
    python training/demo/pack_gpu_data.py --wallpapers              # the pool of 72 (with Debian's wallpapers)
    python training/demo/pack_gpu_data.py --wallpapers --jpeg-quality 97   # the 72 in a size the device tool carries
    python training/demo/pack_gpu_data.py --wallpapers --more-photographs --jpeg-quality 97   # the pool of 91
    python training/demo/pack_gpu_data.py --init build/grow8-s2900  # also a model to start from (INIT=build/carry/init)

The device machine of training/demo/gpu_train_demo.sh has neither Debian's opencv-doc nor ../shared beside the checkout:
this folder travels with the command instead (`carry`; 64 MiB at most with the working tree). Images are lossless
WebPs named after their source (`opencv-doc.baboon.webp`), or with --jpeg-quality JPEGs without chroma subsampling
(at 97 the 72 take 23 MiB instead of 46, each within 42 dB PSNR of its pixels, far above what the demo model
reaches); the held-out ones are never written.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pid_sdk.errors import InputError  # noqa: E402
from pid_sdk.tae import SHARED_TAE_DIR  # noqa: E402
from training.data import DEMO_HELD_OUT, package_images  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="build/carry")
    p.add_argument("--tae-dir", default=str(SHARED_TAE_DIR))
    p.add_argument("--init", default=None, help="an SDK artefact to carry as OUT/init (gpu_train_demo.sh INIT=)")
    p.add_argument("--wallpapers", action="store_true", help="add the photographs of Debian's wallpaper packages")
    p.add_argument("--more-photographs", action="store_true", help="add 19 more photographs (training/data.py)")
    p.add_argument("--jpeg-quality", type=int, default=None, metavar="Q", help="write JPEGs of quality Q (1-100, "
                   "no chroma subsampling) instead of lossless WebPs: smaller, so --wallpapers fits the carry")
    p.add_argument("--partial-data", action="store_true", help="pack the photographs found here even if some "
                   "sources are missing")
    args = p.parse_args()
    if args.jpeg_quality is not None and not 1 <= args.jpeg_quality <= 100:
        p.error(f"--jpeg-quality {args.jpeg_quality}: expected 1 to 100 (97 keeps every image within 42 dB PSNR)")
    out = Path(args.out)
    if args.init and not (Path(args.init) / "manifest.json").is_file():  # checked before the old pack goes
        raise SystemExit(f"--init {args.init} is no SDK artefact (no manifest.json): pass a folder of ship_demo.py")
    try:  # read before the old pack goes too: the GPU machine trains on exactly this pack
        photographs = package_images(exclude=DEMO_HELD_OUT, complete=not args.partial_data,
                                     wallpapers=args.wallpapers, more=args.more_photographs)
    except InputError as e:
        p.error(str(e))
    images, tae = out / "images", out / "tae"
    ours = ("images", "tae", "init")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in ours) if out.is_dir() else []
    if foreign:  # only an earlier pack is replaced
        raise SystemExit(f"{out} holds other files ({', '.join(foreign[:5])}): pick an empty or new --out")
    shutil.rmtree(out, ignore_errors=True)
    images.mkdir(parents=True)
    tae.mkdir()
    for name, img in photographs.items():
        save_image(Image.fromarray(img), images, name, args.jpeg_quality)
    for name in ("taef1_encoder.safetensors", "taef1_decoder.safetensors", "LICENSE.taesd"):
        shutil.copy(Path(args.tae_dir) / name, tae / name)
    if args.init:
        shutil.copytree(args.init, out / "init")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    init = f", init {args.init}" if args.init else ""
    print(f"{out}: {len(list(images.iterdir()))} images, taef1{init}, {size / 2**20:.1f} MiB")
    tree = tracked_bytes()
    if size + tree > CARRY_LIMIT:
        print(f"warning: with the working tree ({tree / 2**20:.1f} MiB) this is over the device tool's "
              f"{CARRY_LIMIT // 2**20} MiB carry limit; drop --init or --wallpapers, or pass --jpeg-quality 97",
              file=sys.stderr)
    return 0


def save_image(img: Image.Image, folder: Path, name: str, jpeg_quality: int | None) -> None:
    if jpeg_quality is None:
        img.save(folder / f"{name}.webp", lossless=True)  # the pixels, in 2/3 of a PNG's size
    else:  # 4:4:4: the chroma subsampling of a default JPEG (or a lossy WebP) costs sharp colour edges
        img.save(folder / f"{name}.jpg", quality=jpeg_quality, subsampling=0)


CARRY_LIMIT = 64 * 2**20  # what the device tool carries, working tree and `carry` together


def tracked_bytes() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True).stdout
    return sum((ROOT / f).stat().st_size for f in files.split("\0") if f and (ROOT / f).is_file())


if __name__ == "__main__":
    sys.exit(main())
