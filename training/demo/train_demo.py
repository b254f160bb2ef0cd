"""Train the embedded demo decoder (preset demo-flux1) on real images that ship inside packages.

    python training/demo/train_demo.py --minutes 40 --out build/demo

Data: the photographs that ship inside packages (training/data.py; `--wallpapers` adds those of Debian's wallpaper
packages, `--more-photographs` 19 more, from scikit-image, opencv-doc, labelme-examples and libsixel-examples)
except `chelsea`, which is held out for the sample latent, or `--data FOLDER` (training/demo/pack_gpu_data.py writes
that pool as a folder for a machine without the packages). Pairs: random square crops at several scales; the latent is
the taef1 encoding of the crop downsampled 4x (512x512 -> 128x128 -> 16x16x16). Needs
../shared/data/tae beside the repository, or `--tae-dir`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pid_sdk.checkpoints import load_checkpoint  # noqa: E402
from pid_sdk.config import get_preset  # noqa: E402
from pid_sdk.errors import ConfigError, InputError  # noqa: E402
from pid_sdk.latents import get_latent_space  # noqa: E402
from pid_sdk.model import build_model  # noqa: E402
from pid_sdk.tae import SHARED_TAE_DIR, TinyAutoencoder  # noqa: E402
from training.data import DEMO_HELD_OUT, PairSampler, folder_images, package_images  # noqa: E402
from training.grow import grow  # noqa: E402
from training.trainer import TrainConfig, Trainer, parse_pooled_loss, run_config  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="build/demo")
    p.add_argument("--minutes", type=float, default=40)
    p.add_argument("--sizes", type=int, nargs="+", default=[512], help="square crop sizes, one picked per batch")
    p.add_argument("--batch", type=int, default=2, help="batch at 512x512; smaller crops get as many pixels")
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--lr-decay", type=int, nargs=2, metavar=("START", "END"), default=None,
                   help="steps over which the learning rate falls linearly to a tenth")
    p.add_argument("--shift", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model: 1.25-1.4x faster after one compile per crop size")
    p.add_argument("--objective", choices=["flow", "rollout"], default="flow",
                   help="rollout: fine-tune for the 4-step sampler on the model's own steps (training/trainer.py)")
    p.add_argument("--pooled-loss", nargs="*", metavar="POOL:WEIGHT", help="e.g. 8:4 16:8 (training/flow.py)")
    p.add_argument("--gradient-loss", type=float, default=0.0, metavar="WEIGHT",
                   help="weight of the error's neighbour-to-neighbour steps (training/flow.py: gradient_mse)")
    p.add_argument("--latent-noise-prob", type=float, default=0.5,
                   help="share of samples whose latent is noised (sigma_latent ~ U[0, 0.8]); the rest are clean")
    p.add_argument("--latent-dropout", type=float, default=0.1, help="share of samples with a zero latent")
    p.add_argument("--until-step", type=int, default=None, help="stop at this step count even with time left")
    p.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast; the taef1 encoder runs there too)")
    p.add_argument("--data", default=None, help="a folder of training images instead of the package photographs")
    p.add_argument("--tae-dir", default=str(SHARED_TAE_DIR))
    p.add_argument("--init", default=None, help="start a new run from these weights (an SDK artefact or checkpoint)")
    p.add_argument("--wallpapers", action="store_true",
                   help="add the photographs of Debian's wallpaper packages to the pool (training/data.py)")
    p.add_argument("--more-photographs", action="store_true",
                   help="add 19 more photographs, 8 of them grey (training/data.py: MORE_SOURCES)")
    p.add_argument("--augment", action="store_true",
                   help="turn, mirror and recolour the crops (training/data.py: augmented)")
    p.add_argument("--partial-data", action="store_true",
                   help="train on the package photographs found here even if some sources are missing")
    p.add_argument("--grow", nargs="+", metavar="NAME=DEPTH", default=[],
                   help="with --init: deepen it first, computing the same (training/grow.py), e.g. patch_depth=6")
    args = p.parse_args()
    if args.init and args.resume:
        p.error("--init starts a new run and --resume continues one: pass one of them")
    if (args.wallpapers or args.more_photographs) and args.data:
        p.error("--wallpapers and --more-photographs add to the package photographs, and a --data folder is the "
                "whole pool: pass one (training/demo/pack_gpu_data.py --wallpapers packs both into a folder)")
    if args.grow and not args.init:
        p.error("--grow deepens the --init weights: pass --init too")
    if not args.resume and Path(args.out).exists() and any(Path(args.out).iterdir()):
        p.error(f"{args.out} is not empty: pass --resume to continue the run there, or choose a new folder")
    torch.manual_seed(args.seed)
    if args.resume:
        model, init = build_model(run_config(args.out)), None
    else:
        model, init = initial_model(args.init, depths(p, args.grow))
    try:
        images = load_images(args.data, complete=not args.partial_data, wallpapers=args.wallpapers,
                             more=args.more_photographs)
    except InputError as e:
        p.error(str(e))
    sampler = PairSampler(list(images.values()), encoder_on(args.device, args.tae_dir),
                          buckets=[(s, s) for s in args.sizes], seed=args.seed, device=args.device,
                          augment=args.augment)
    trainer = Trainer(model, get_latent_space("flux1"),
                      TrainConfig(steps=10**9, batch=args.batch, lr=args.lr, lr_decay=args.lr_decay, shift=args.shift,
                                  ema_decay=0.995, seed=args.seed, compile=args.compile,
                                  latent_noise_prob=args.latent_noise_prob, latent_dropout=args.latent_dropout,
                                  objective=args.objective, pooled_loss=parse_pooled_loss(args.pooled_loss),
                                  gradient_loss=args.gradient_loss),
                      args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.resume:
        trainer.resume(out)
    record = json.loads((out / "data.json").read_text()) if args.resume and (out / "data.json").exists() else {}
    (out / "data.json").write_text(json.dumps({"images": sorted(images), "held_out": DEMO_HELD_OUT,
                                               "command": " ".join(sys.argv),
                                               "init": init or record.get("init")}, indent=2))
    t0, deadline, losses = time.perf_counter(), time.perf_counter() + 60 * args.minutes, []
    while time.perf_counter() < deadline and (args.until_step is None or trainer.step_count < args.until_step):
        losses.append(trainer.step(sampler.batch_of_pixels(args.batch * 512 * 512)))
        if trainer.step_count % 50 == 0:
            print(f"step {trainer.step_count} loss {sum(losses[-50:]) / len(losses[-50:]):.4f} "
                  f"{(time.perf_counter() - t0) / 60:.1f} min", flush=True)
        if trainer.step_count % 200 == 0:
            trainer.save(out)
    trainer.save(out)
    peak = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB on the GPU" if args.device == "cuda" else ""
    print(f"done: {trainer.step_count} steps in {(time.perf_counter() - t0) / 60:.1f} min{peak}")
    return 0


def depths(p: argparse.ArgumentParser, items: list[str]) -> dict[str, int]:
    try:
        return {name: int(depth) for name, _, depth in (item.partition("=") for item in items)}
    except ValueError:
        p.error(f"--grow takes NAME=DEPTH items with whole-number depths, got {items}")


def initial_model(init: str | None, grow_to: dict[str, int]) -> tuple[torch.nn.Module, str | None]:
    """The model a new run starts from, and how data.json records it: the --init path with the source its manifest
    names ("from pid_sdk/data/demo-flux1" alone would not say which weights those were once the artefact changes)."""
    if init is None:
        model = build_model(get_preset("demo-flux1"))
        model.init_weights()
        return model, None
    loaded = load_checkpoint(init)
    if loaded.config.name != "demo-flux1":
        raise SystemExit(f"--init {init} holds a {loaded.config.name} model; this script trains demo-flux1")
    try:
        model = grow(loaded.model.float(), grow_to) if grow_to else loaded.model.float()
    except ConfigError as e:
        raise SystemExit(f"--grow: {e}") from None
    source = (loaded.manifest or {}).get("source")
    grown = " grown to " + " ".join(f"{k}={v}" for k, v in grow_to.items()) if grow_to else ""
    return model, (f"{init} ({source})" if source else init) + grown


def load_images(folder: str | None, complete: bool, wallpapers: bool = False,
                more: bool = False) -> dict[str, np.ndarray]:
    if folder is None:
        return package_images(exclude=DEMO_HELD_OUT, complete=complete, wallpapers=wallpapers, more=more)
    images = folder_images(folder)
    held = [name for name in images if Path(name).name in DEMO_HELD_OUT]
    if held:
        raise SystemExit(f"{folder} holds the held-out image(s) {held}: remove them")
    return images


def encoder_on(device: str, tae_dir: str):
    return TinyAutoencoder(tae_dir, "taef1").to(device).encode  # the sampler's crops are already on `device`


if __name__ == "__main__":
    sys.exit(main())
