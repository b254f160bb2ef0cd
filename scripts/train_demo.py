"""Train the embedded demo decoder (preset demo-flux1) on real images that ship inside packages.

    python scripts/train_demo.py --minutes 40 --out build/demo

Data: scikit-image's photographs (and scikit-learn's / matplotlib's when installed) except `chelsea`, which is held
out for the sample latent. Pairs: random 512x512 crops at several scales; the latent is the taef1 encoding of the
crop downsampled 4x (128x128 -> 16x16x16). Needs ../shared/data/tae beside the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pid_sdk.config import get_preset  # noqa: E402
from pid_sdk.latents import get_latent_space  # noqa: E402
from pid_sdk.model import build_model  # noqa: E402
from pid_sdk.tae import TinyAutoencoder  # noqa: E402
from training.data import DEMO_HELD_OUT, PairSampler, package_images  # noqa: E402
from training.trainer import TrainConfig, Trainer, parse_pooled_loss  # noqa: E402


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
    p.add_argument("--until-step", type=int, default=None, help="stop at this step count even with time left")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    cfg = get_preset("demo-flux1")
    model = build_model(cfg)
    model.init_weights()
    tae = TinyAutoencoder(ROOT.parent / "shared" / "data" / "tae", "taef1")
    images = package_images(exclude=DEMO_HELD_OUT)
    sampler = PairSampler(list(images.values()), tae.encode, buckets=[(s, s) for s in args.sizes], seed=args.seed)
    trainer = Trainer(model, get_latent_space("flux1"),
                      TrainConfig(steps=10**9, batch=args.batch, lr=args.lr, lr_decay=args.lr_decay, shift=args.shift,
                                  ema_decay=0.995, seed=args.seed, compile=args.compile,
                                  objective=args.objective, pooled_loss=parse_pooled_loss(args.pooled_loss)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.resume:
        trainer.resume(out)
    (out / "data.json").write_text(json.dumps({"images": sorted(images), "held_out": DEMO_HELD_OUT,
                                               "command": " ".join(sys.argv)}, indent=2))
    t0, deadline, losses = time.perf_counter(), time.perf_counter() + 60 * args.minutes, []
    while time.perf_counter() < deadline and (args.until_step is None or trainer.step_count < args.until_step):
        losses.append(trainer.step(sampler.batch_of_pixels(args.batch * 512 * 512)))
        if trainer.step_count % 50 == 0:
            print(f"step {trainer.step_count} loss {sum(losses[-50:]) / len(losses[-50:]):.4f} "
                  f"{(time.perf_counter() - t0) / 60:.1f} min", flush=True)
        if trainer.step_count % 200 == 0:
            trainer.save(out)
    trainer.save(out)
    print(f"done: {trainer.step_count} steps in {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
