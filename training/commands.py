"""The CLI's training commands: `pid-sdk train` and `pid-sdk distill` (their arguments are declared in
pid_sdk/cli.py, which imports this module only when one of them runs)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from pid_sdk.buckets import Bucket
from pid_sdk.checkpoints import load_checkpoint, save_artefact
from pid_sdk.config import get_preset
from pid_sdk.errors import CheckpointError, ConfigError, InputError
from pid_sdk.latents import get_latent_space
from pid_sdk.model import build_model
from pid_sdk.tae import TinyAutoencoder
from training.data import DEMO_HELD_OUT, PairSampler, load_folder, package_images
from training.distill import DMD2, DistillConfig
from training.trainer import TrainConfig, Trainer, is_run_folder, load_run_ema, parse_pooled_loss, run_config


def pair_sampler(args, cfg, device: str = "cpu"):
    """The training pairs the data options describe: images, buckets, crops, and their tiny-autoencoder latents."""
    buckets = [Bucket.parse(b) for b in args.buckets] if args.buckets else [Bucket(args.size, args.size)]
    for b in buckets if cfg.adapter is not None else ():
        b.latent_size(cfg.adapter.latent_factor, cfg.adapter.sr_scale)  # whole latent cells, or the fix
    tae = TinyAutoencoder(args.tae_dir, args.tae).to(device)
    images = load_folder(args.data) if args.data else list(package_images(exclude=DEMO_HELD_OUT).values())
    return PairSampler(images, tae.encode, buckets=[(b.height, b.width) for b in buckets], device=device,
                       crop=args.crop, augment=args.augment)


def train(args) -> int:
    _refuse_a_used_folder(Path(args.out), args.resume)
    cfg, model = _initial_model(args)
    space = get_latent_space(cfg.latent_space)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    trainer = Trainer(model, space, TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, lr_decay=args.lr_decay,
                                                shift=args.shift, freeze_backbone=args.freeze_backbone,
                                                compile=args.compile, objective=args.objective,
                                                latent_noise_prob=args.latent_noise_prob,
                                                latent_dropout=args.latent_dropout,
                                                pooled_loss=parse_pooled_loss(args.pooled_loss),
                                                gradient_loss=args.gradient_loss), device)
    if args.resume:
        trainer.resume(args.out)
    elif args.init:  # where the weights came from, kept beside the run (resuming never rewrites it)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "init.json").write_text(json.dumps({"init": args.init, "config": cfg.name}, indent=2))
    trainer.fit(pair_sampler(args, cfg, device), args.out)
    print(f"{args.out}: {trainer.step_count} steps")
    return 0


def _refuse_a_used_folder(out: Path, resume: bool) -> None:
    """A new run in a folder that holds files would mix its checkpoints with theirs."""
    if not resume and out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty.", fix="pass --resume to continue the run there, or choose a new folder")


def _initial_model(args):
    """The run's config and first weights: --preset at random, --init's trained weights, or (--resume) the
    run's own recorded config, whatever --preset says."""
    if args.resume and args.init:
        raise InputError("--init starts a new run from trained weights; --resume continues one.",
                         received="--init and --resume", expected="one of them", fix="drop --init to resume")
    if args.resume:
        if not (Path(args.out) / "train_config.json").is_file():
            raise CheckpointError(f"No training run in {args.out} to resume.", fix="drop --resume to start one there")
        cfg = run_config(args.out)
        return cfg, build_model(cfg)  # the checkpoint's weights are loaded by Trainer.resume
    if not args.init:
        cfg = get_preset(args.preset)
        model = build_model(cfg)
        model.init_weights()
        return cfg, model
    loaded = load_checkpoint(args.init, trust_pickle=args.trust_pickle)
    cfg = replace(loaded.config, latent_space=args.latent_space or loaded.config.latent_space)
    if cfg.adapter is None or cfg.latent_space is None:
        raise ConfigError(f"{args.init} is no latent-conditioned decoder with a known latent space.",
                          received=f"{cfg.name}, latent space {cfg.latent_space}",
                          expected="a PiD checkpoint with an adapter", fix="pass --latent-space (e.g. flux1)"
                          if cfg.adapter is not None else "start from a PiD decoder checkpoint or a --preset")
    return cfg, loaded.model.float()


def distill(args) -> int:
    teacher_dir, lineage = Path(args.teacher), ""
    if is_run_folder(teacher_dir):
        cfg, teacher = load_run_ema(teacher_dir)
    else:
        loaded = load_checkpoint(teacher_dir)
        cfg, teacher = loaded.config, loaded.model
        lineage = (loaded.manifest or {}).get("source", "")
    if args.save_every < 1:
        raise InputError("--save-every counts steps.", received=args.save_every, expected="1 or more",
                         fix="e.g. --save-every 100")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dcfg = DistillConfig(steps=args.steps, batch=args.batch, lr_student=args.lr_student, lr_fake=args.lr_fake,
                         guidance=args.guidance, fake_updates=args.fake_updates, gan_weight=args.gan_weight,
                         r1_weight=args.r1_weight, recon_weight=args.recon_weight,
                         latent_noise_prob=args.latent_noise_prob, seed=args.seed)
    dmd = DMD2(teacher.float(), dcfg, device)
    out = Path(args.out)
    _refuse_a_used_folder(out, args.resume)
    if args.resume:
        dmd.resume(out)
    space, sampler = get_latent_space(cfg.latent_space), pair_sampler(args, cfg, device)
    bar = tqdm(total=args.steps, initial=dmd.step_count, unit="step", desc="distill")
    t0, seen = time.perf_counter(), 0
    while dmd.step_count < args.steps:
        losses = dmd.step(sampler.batch(args.batch), space)
        seen += args.batch
        bar.update(1)
        losses["img_s"] = seen / (time.perf_counter() - t0)
        bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()})
        if dmd.step_count % args.save_every == 0 or dmd.step_count == args.steps:
            source = f"pid-sdk distill (DMD2) from {args.teacher}, step {dmd.step_count}"
            _save_distill(dmd, cfg, out, source + (f"; the teacher: {lineage}" if lineage else ""))
    bar.close()
    print(f"{out / 'student'}: the student after {dmd.step_count} steps")
    return 0


def _save_distill(dmd, cfg, out: Path, source: str) -> None:
    """The resumable state, and the student as a model artefact in `OUT/student`."""
    dmd.save(out)
    save_artefact(dmd.student, cfg, out / "student", dtype=torch.float32, source=source, replace_artefact=True)
