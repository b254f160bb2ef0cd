"""DMD2-distil the demo decoder (the EMA weights of a training/demo/train_demo.py run) onto the 4-step student schedule.

    python training/demo/distill_demo.py --teacher build/demo --out build/demo-distill --minutes 40

Data as in train_demo.py (package photographs, `skimage.chelsea` held out). No captions exist, so text-only
guidance would compare two identical branches: guidance is 1. `--recon-weight` adds the SDK's optional
reconstruction term (see training/distill.py). Writes the student as an SDK artefact to OUT/stepNNNNN every
`--save-every` steps and to OUT/final at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from train_demo import encoder_on  # noqa: E402

from pid_sdk.checkpoints import save_artefact  # noqa: E402
from pid_sdk.errors import InputError  # noqa: E402
from pid_sdk.latents import get_latent_space  # noqa: E402
from pid_sdk.tae import SHARED_TAE_DIR  # noqa: E402
from training.data import DEMO_HELD_OUT, PairSampler, package_images  # noqa: E402
from training.distill import DMD2, DistillConfig  # noqa: E402
from training.trainer import load_run_ema  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--teacher", default="build/demo")
    p.add_argument("--out", default="build/demo-distill")
    p.add_argument("--minutes", type=float, default=40)
    p.add_argument("--sizes", type=int, nargs="+", default=[256])
    p.add_argument("--batch", type=int, default=2, help="batch at 256x256; other sizes get as many pixels")
    p.add_argument("--recon-weight", type=float, default=0.0)
    p.add_argument("--lr-student", type=float, default=1e-5)
    p.add_argument("--lr-fake", type=float, default=2e-5)
    p.add_argument("--fake-updates", type=int, default=5)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps even with time left")
    p.add_argument("--device", default="cpu", help="cuda: the networks, crops and encoder there, bf16 autocast")
    p.add_argument("--partial-data", action="store_true",
                   help="distil on the package photographs found here even if some sources are missing")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    cfg, teacher = load_run_ema(args.teacher)
    dmd = DMD2(teacher.float(), DistillConfig(guidance=1.0, recon_weight=args.recon_weight, seed=args.seed,
                                              lr_student=args.lr_student, lr_fake=args.lr_fake,
                                              fake_updates=args.fake_updates), args.device)
    try:
        photographs = package_images(exclude=DEMO_HELD_OUT, complete=not args.partial_data)
    except InputError as e:
        p.error(str(e))
    sampler = PairSampler(list(photographs.values()),
                          encoder_on(args.device, str(SHARED_TAE_DIR)),
                          buckets=[(s, s) for s in args.sizes], seed=args.seed, device=args.device)
    space = get_latent_space("flux1")
    out = Path(args.out)
    t0, deadline, logs, step = time.perf_counter(), time.perf_counter() + 60 * args.minutes, [], 0
    source = f"training/demo/distill_demo.py {' '.join(sys.argv[1:])}"
    while time.perf_counter() < deadline and (args.steps is None or step < args.steps):
        logs.append(dmd.step(sampler.batch_of_pixels(args.batch * 256 * 256), space))
        step += 1
        if step % 10 == 0:
            mean = {k: sum(d[k] for d in logs[-10:]) / 10 for k in logs[-1]}
            print(f"step {step} " + " ".join(f"{k} {v:.4f}" for k, v in mean.items())
                  + f" {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
        if step % args.save_every == 0:
            save_artefact(dmd.student, cfg, out / f"step{step:05d}", dtype=torch.float32,
                          source=f"{source} (step {step})")
    save_artefact(dmd.student, cfg, out / "final", dtype=torch.float32, source=f"{source} ({step} steps)")
    print(f"done: {step} steps in {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
