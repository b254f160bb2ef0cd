"""`pid-sdk`: info, convert, decode. Errors are printed as messages, never as tracebacks."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from pid_sdk.errors import CheckpointError, ConfigError, InputError, PiDError
from pid_sdk.runtime.speed import SPEEDS

MAX_FILE_LATENTS = 1024  # images one `pid-sdk decode` writes


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except PiDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so briefly; PID_SDK_DEBUG=1 shows the traceback
        if os.environ.get("PID_SDK_DEBUG"):
            raise
        print(f"internal error: {type(exc).__name__}: {exc}\n(rerun with PID_SDK_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pid-sdk", description="Run the PiD pixel diffusion decoder.")
    sub = p.add_subparsers(required=True, metavar="command")

    info = sub.add_parser("info", help="describe a checkpoint, an artefact or a preset")
    info.add_argument("model", nargs="?", help="checkpoint file or artefact folder")
    info.add_argument("--preset", help="describe a preset instead")
    info.add_argument("--presets", action="store_true", help="list every preset")
    info.add_argument("--trust-pickle", action="store_true", help="allow pickles that run code (trusted files only)")
    info.set_defaults(run=_info)

    conv = sub.add_parser("convert", help="write the SDK artefact (model.safetensors + manifest.json)")
    conv.add_argument("source", help="official .pth, safetensors repack, or artefact folder")
    conv.add_argument("output", help="new folder for the artefact")
    conv.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    conv.add_argument("--preset", help="force a preset instead of detecting it from the keys")
    conv.add_argument("--latent-space", help="record the latent space the model decodes")
    conv.add_argument("--trust-pickle", action="store_true")
    conv.set_defaults(run=_convert)

    dec = sub.add_parser("decode", help="decode a latent file (.safetensors / .pt / .npy) to PNG")
    dec.add_argument("latent", help="latent file: [C, h, w] or [B, C, h, w]")
    dec.add_argument("-o", "--output", required=True, help="PNG path (a batch writes NAME_0.png, NAME_1.png, ...)")
    src = dec.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="artefact folder or checkpoint file")
    src.add_argument("--preset", help="a preset with seeded random weights (for trying the pipeline)")
    dec.add_argument("--latent-space", help="flux1, sd3, sdxl, flux2, qwenimage, dinov2, siglip (default: the model's)")
    dec.add_argument("--latent-sigma", type=float, default=0.0, help="noise level of a partially denoised capture")
    dec.add_argument("--raw", action="store_true", help="the latent is a raw VAE latent, not normalised")
    dec.add_argument("--steps", type=int, default=4)
    dec.add_argument("--seed", type=int, default=0)
    dec.add_argument("--sampler", choices=["sde", "ode", "teacher"], default="sde")
    dec.add_argument("--prompt", help="caption (needs --text-encoder)")
    dec.add_argument("--text-encoder", help="local folder of Gemma-2-2B-it")
    dec.add_argument("--text-embeddings", help="file with [L, 2304] or [B, L, 2304] embeddings")
    dec.add_argument("--batch-size", type=int, default=1, help="latents decoded together")
    dec.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    dec.add_argument("--precision", choices=["fp32", "bf16"])
    dec.add_argument("--speed", choices=list(SPEEDS),
                     help="PyTorch backend setting (default reference: fp32 weights, bf16 autocast on CUDA)")
    dec.add_argument("--trust-pickle", action="store_true")
    dec.add_argument("--no-verify", action="store_true",
                     help="load folder files whose manifest lacks their sha256 (paths stay confined)")
    dec.add_argument("--quiet", action="store_true", help="no progress bar")
    dec.set_defaults(run=_decode)

    exp = sub.add_parser("export",
                         help="export graph sets (text, adapter, denoiser) per size into an engine folder: ONNX "
                         "or AOTInductor")
    exp.add_argument("folder", help="engine folder (created, or extended when it exists)")
    exp.add_argument("--model", help="checkpoint or artefact (default: the folder's own weights)")
    exp.add_argument("--preset", help="a preset with seeded random weights")
    exp.add_argument("--seed", type=int, default=0)
    exp.add_argument("--size", action="append", help="output HEIGHTxWIDTH (repeatable; default: the preset's buckets)")
    exp.add_argument("--batch", type=int, default=1)
    exp.add_argument("--precision", action="append", choices=["fp32", "bf16", "fp16", "fp8", "fp8-fp32"],
                     help="graph precision (repeatable; default fp32). fp8: FP8 linears in a bf16 graph; "
                     "fp8-fp32: the same in an fp32 graph, which ONNX Runtime runs on a CPU")
    exp.add_argument("--calib-samples", type=int, default=4, help="random calibration latents for fp8")
    exp.add_argument("--attention-dtype", choices=["fp16"],
                     help="run attention in this dtype (TensorRT-RTX needs fp16)")
    exp.add_argument("--format", choices=["onnx", "aoti"], default="onnx",
                     help="onnx: ONNX graphs (ONNX Runtime, TensorRT builds); aoti: AOTInductor packages for the C ABI "
                     "(bindings/) and backend='aoti'")
    exp.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                     help="the device AOTInductor packages are compiled for (cuda: on a CUDA host)")
    exp.add_argument("--trust-pickle", action="store_true")
    exp.set_defaults(run=_export)

    bld = sub.add_parser("build", help="build TensorRT / TensorRT-RTX engines from an engine folder's ONNX graphs")
    bld.add_argument("folder", help="engine folder with exported ONNX graph sets")
    bld.add_argument("--target", action="append", help="rtx5090, rtx4090, h100, h200, gb200 (repeatable)")
    bld.add_argument("--matrix", help="build every target of a build matrix (engines/matrix.json)")
    bld.add_argument("--size", action="append", help="only these HEIGHTxWIDTH graph sets")
    bld.add_argument("--batch", type=int)
    bld.add_argument("--precision", action="append", choices=["fp32", "bf16", "fp16", "fp8"])
    bld.add_argument("--strip", action="store_true", help="weight-stripped plans, refitted from the ONNX weights")
    bld.add_argument("--version-compatible", action="store_true")
    bld.add_argument("--hardware-compat", choices=["none", "ampere_plus", "same_compute_capability"], default="none")
    bld.add_argument("--timing-cache", help="TensorRT timing cache file, read and updated (reuse it across builds; "
                     "TensorRT-RTX has none: it says so and writes nothing)")
    bld.set_defaults(run=_build)

    tr = sub.add_parser("train", help="train a latent-conditioned decoder (rectified flow) on a folder of images")
    tr.add_argument("out", help="run folder (checkpoints: model, ema, trainer state)")
    tr.add_argument("--preset", default="demo-flux1")
    tr.add_argument("--data", help="folder of images (default: the photographs that ship inside packages)")
    tr.add_argument("--tae", default="taef1", help="latent encoder: a tiny autoencoder of shared/data/tae")
    tr.add_argument("--tae-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "tae"))
    tr.add_argument("--steps", type=int, default=1000)
    tr.add_argument("--batch", type=int, default=2)
    _data_arguments(tr)
    tr.add_argument("--lr", type=float, default=2e-4)
    tr.add_argument("--lr-decay", type=int, nargs=2, metavar=("START", "END"),
                    help="steps over which the learning rate falls linearly to a tenth")
    tr.add_argument("--shift", type=float, default=1.0)
    tr.add_argument("--freeze-backbone", action="store_true", help="train only the adapter and its gates")
    tr.add_argument("--init", help="start from trained weights (official checkpoint or artefact) instead of --preset")
    tr.add_argument("--latent-space", help="with --init: the latent space, where the checkpoint does not say it")
    tr.add_argument("--trust-pickle", action="store_true", help="allow --init pickles that run code (trusted files)")
    tr.add_argument("--objective", choices=["flow", "rollout"], default="flow",
                    help="rollout: fine-tune a trained run for the 4-step sampler (see training/trainer.py)")
    tr.add_argument("--latent-noise-prob", type=float, default=0.5,
                    help="share of samples with a noised latent (sigma_latent ~ U[0, 0.8]); lower it to fine-tune "
                         "for clean latents")
    tr.add_argument("--latent-dropout", type=float, default=0.1, help="share of samples with a zero latent")
    tr.add_argument("--pooled-loss", nargs="*", metavar="POOL:WEIGHT",
                    help="extra weight on the error average-pooled by POOL, e.g. 8:4 16:8")
    tr.add_argument("--gradient-loss", type=float, default=0.0, metavar="WEIGHT",
                    help="extra weight on the error's steps between neighbouring pixels, e.g. 1")
    tr.add_argument("--compile", action="store_true", help="torch.compile the model (slow first step per crop size)")
    tr.add_argument("--resume", action="store_true")
    tr.set_defaults(run=_train)

    dst = sub.add_parser("distill", help="DMD2 distillation of a trained decoder to the 4-step student")
    dst.add_argument("out", help="run folder: resumable state, and the student as a model artefact in OUT/student")
    dst.add_argument("--teacher", required=True, help="a train run folder (its EMA weights) or a model artefact")
    dst.add_argument("--data", help="folder of images (default: package photographs)")
    dst.add_argument("--tae", default="taef1")
    dst.add_argument("--tae-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "tae"))
    dst.add_argument("--steps", type=int, default=200, help="total student updates (a resumed run counts on)")
    dst.add_argument("--batch", type=int, default=1)
    _data_arguments(dst)
    dst.add_argument("--guidance", type=float, default=1.0)
    dst.add_argument("--lr-student", type=float, default=1e-5)
    dst.add_argument("--lr-fake", type=float, default=2e-5)
    dst.add_argument("--fake-updates", type=int, default=5, help="fake-score updates per student update")
    dst.add_argument("--gan-weight", type=float, default=0.0)
    dst.add_argument("--r1-weight", type=float, default=0.0, help="R1 penalty of the GAN head on real images")
    dst.add_argument("--recon-weight", type=float, default=0.0,
                     help="pull the student towards the real image too (not in the paper; 0 = plain DMD2)")
    dst.add_argument("--latent-noise-prob", type=float, default=0.5,
                     help="share of samples with a noised latent (sigma_latent ~ U[0, 0.8]), as in training")
    dst.add_argument("--seed", type=int, default=0)
    dst.add_argument("--device", help="cpu or cuda (default: cuda when available; bf16 autocast there)")
    dst.add_argument("--save-every", type=int, default=100, help="write the state and the student every N steps")
    dst.add_argument("--resume", action="store_true", help="continue the run in OUT")
    dst.set_defaults(run=_distill)

    srv = sub.add_parser("serve", help="serve the decoder over HTTP with Ray Serve (dynamic batching, replicas)")
    srv.add_argument("model", help="anything Decoder.load takes: an artefact, a checkpoint, an engine folder")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--replicas", type=int, default=1)
    srv.add_argument("--max-batch", type=int, default=8, help="requests decoded together at most")
    srv.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long a batch waits to fill")
    srv.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "onnxruntime", "aoti", "pytorch"])
    srv.add_argument("--max-queue", type=int, default=64, help="requests a replica holds before answering 503")
    srv.add_argument("--max-body-mb", type=float, default=64.0, help="larger request bodies get 413")
    srv.add_argument("--num-gpus", type=float, help="GPUs per replica, fractions allowed (default: 1 with a GPU)")
    srv.add_argument("--autoscaling", help="Ray Serve autoscaling_config as JSON, e.g. "
                                           "'{\"min_replicas\": 1, \"max_replicas\": 4}'")
    srv.add_argument("--address", help="join this Ray cluster (default: start a local Ray instance)")
    srv.set_defaults(run=_serve)

    cmp_ = sub.add_parser("compare", help="parity of an engine folder's backend against its PyTorch reference")
    cmp_.add_argument("folder", help="engine folder")
    cmp_.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt", "aoti"])
    cmp_.add_argument("--size", action="append", help="HEIGHTxWIDTH entries to check (default: all of the backend)")
    cmp_.add_argument("--steps", type=int, default=4)
    cmp_.add_argument("--seed", type=int, default=0)
    cmp_.add_argument("--no-verify", action="store_true", help="run files whose manifest lacks their sha256")
    cmp_.set_defaults(run=_compare)

    ver = sub.add_parser("verify", help="check an engine folder's files (confined, present, hashed, plan headers) "
                                        "without running anything")
    ver.add_argument("folder", help="engine folder")
    ver.set_defaults(run=_verify)
    return p


# --- info -----------------------------------------------------------------------------------------------------
def _info(args) -> int:
    from pid_sdk.config import PRESETS, get_preset
    from pid_sdk.runtime.manifest import is_engine_dir, read_manifest

    if args.presets:
        from pid_sdk.checkpoints import read_manifest as read_artefact_manifest
        from pid_sdk.config import DEMO_MODEL

        for name, cfg in PRESETS.items():
            print(f"{name:32s} {cfg.description}")
        shipped = read_artefact_manifest(DEMO_MODEL)  # grown from demo-flux1: its own config, its own size
        print(f"{'DEMO_MODEL (shipped weights)':32s} {shipped['config']['description']}")
        return 0
    if args.preset:
        cfg, params, source = get_preset(args.preset), None, "preset"
    elif args.model and is_engine_dir(args.model):
        manifest = read_manifest(args.model)
        print(describe(manifest.config, None, f"engine folder {args.model}"))
        for e in manifest.entries:
            extra = {"onnx": "", "aoti": f" torch {e.torch_version}"}.get(e.backend,
                                                                            f" sm {list(e.sm)} {e.trt_version}")
            print(f"  {e.key}{extra}{' stripped' if e.stripped else ''}")
        return 0
    elif args.model:
        from pid_sdk.checkpoints import load_checkpoint

        loaded = load_checkpoint(args.model, trust_pickle=args.trust_pickle)
        cfg, source = loaded.config, f"{loaded.source} ({loaded.path})"
        params = sum(p.numel() for p in loaded.model.parameters())
    else:
        raise InputError("info needs a model path, --preset NAME or --presets.", fix="pid-sdk info model.pth")
    print(describe(cfg, params, source))
    return 0


def describe(cfg, params: int | None, source: str) -> str:
    from pid_sdk.memory import estimate_memory
    from pid_sdk.model import build_model

    if params is None:
        with torch.device("meta"):
            params = sum(p.numel() for p in build_model(cfg).parameters())
    lines = [f"preset:        {cfg.name}", f"description:   {cfg.description}", f"source:        {source}",
             f"parameters:    {params:,}", f"latent space:  {cfg.latent_space or '(none: text-to-image backbone)'}"]
    b, a = cfg.backbone, cfg.adapter
    lines.append(f"backbone:      hidden {b.hidden_size}, {b.patch_depth} MM-DiT + {b.pixel_depth} PiT blocks, "
                 f"patch {b.patch_size}, RoPE {b.rope_mode}"
                 + (f" (ref {b.rope_ref}px)" if b.rope_mode == "ntk" else ""))
    if a is not None:
        lines.append(f"adapter:       {a.latent_channels} ch /{a.latent_factor} -> width {a.hidden_dim}, "
                     f"{cfg.num_gates} gates ({a.gate}), x{a.sr_scale}, padding {a.padding_mode}"
                     + (", PiT injection" if a.pit_inject else ""))
    for side in (1024, 2048, 4096):
        m = estimate_memory(cfg, params, side, side)
        lines.append(f"memory {side}x{side}: weights bf16 {m['weights_bf16'] / 2**30:.2f} GiB, "
                     f"peak activations ~{m['activations_bf16'] / 2**30:.2f} GiB (bf16, batch 1, estimate)")
    return "\n".join(lines)


# --- convert --------------------------------------------------------------------------------------------------
def _convert(args) -> int:
    from pid_sdk.checkpoints import load_checkpoint, save_artefact

    loaded = load_checkpoint(args.source, preset=args.preset, trust_pickle=args.trust_pickle)
    if args.latent_space:
        from pid_sdk.latents import get_latent_space

        get_latent_space(args.latent_space)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    out = save_artefact(loaded.model, loaded.config, args.output, dtype=dtype,
                        source=f"{loaded.source}:{Path(args.source).name}", latent_space=args.latent_space)
    print(f"wrote {out} ({loaded.config.name}, {args.dtype}, {len(loaded.dropped)} training-only tensors dropped)")
    return 0


# --- export ---------------------------------------------------------------------------------------------------
def _export(args) -> int:
    from export.engine_set import export_engine_set
    from pid_sdk.buckets import Bucket, default_buckets

    if args.batch < 1:
        raise InputError("--batch must be >= 1.", received=args.batch, fix="pass --batch 1")
    name = args.preset or (args.model and Path(args.model).name) or ""
    sizes = [Bucket.parse(s) for s in args.size] if args.size else list(default_buckets(name))
    manifest = export_engine_set(args.folder, model=args.model, preset=args.preset, seed=args.seed, sizes=sizes,
                                 batch=args.batch, precisions=args.precision or ["fp32"],
                                 attention_dtype=args.attention_dtype, trust_pickle=args.trust_pickle,
                                 calib_samples=args.calib_samples, format=args.format, device=args.device)
    print(f"{args.folder}: {len(manifest.entries)} entries ({manifest.config.name})")
    return 0


# --- build ----------------------------------------------------------------------------------------------------
def _build(args) -> int:
    from export.build import BuildOptions, build_engines, build_matrix, load_matrix
    from pid_sdk.buckets import Bucket

    if not args.target and not args.matrix:
        raise InputError("Nothing to build.",
                         fix="pass --target rtx5090 (or h100, gb200) or --matrix engines/matrix.json")
    sizes = [(b.height, b.width) for b in map(Bucket.parse, args.size)] if args.size else None
    options = BuildOptions(strip=args.strip, version_compatible=args.version_compatible,
                           hardware_compatibility=args.hardware_compat,
                           timing_cache=Path(args.timing_cache) if args.timing_cache else None)
    for target in args.target or []:
        built = build_engines(args.folder, target, sizes=sizes, batch=args.batch, precisions=args.precision,
                              options=options)
        print(f"{target}: {len(built)} engine sets")
    if not args.matrix:
        return 0
    result = build_matrix(args.folder, load_matrix(Path(args.matrix)), options=options)
    print(f"matrix: {len(result.built)} engine sets built here")
    for line in result.elsewhere:
        print(f"needs another host: {line}")
    for line in result.unexported:
        print(f"not exported yet: {line}")
    return 2 if result.unexported else 0


# --- train / distill -----------------------------------------------------------------------------------------
def _data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, default=512, help="square crop side (output pixels)")
    p.add_argument("--buckets", nargs="+", metavar="HxW",
                   help="aspect buckets instead of --size, e.g. 512x512 384x640 640x384 (images go to the nearest)")
    p.add_argument("--crop", choices=["random", "centre"], default="random",
                   help="random: crops at several scales, flipped half the time; centre: the image's centre")
    p.add_argument("--augment", action="store_true",
                   help="turn, mirror and recolour the random crops: more views of a small pool")


def _sampler(args, cfg, device: str = "cpu"):
    from pid_sdk.buckets import Bucket
    from pid_sdk.tae import TinyAutoencoder
    from training.data import DEMO_HELD_OUT, PairSampler, load_folder, package_images

    buckets = [Bucket.parse(b) for b in args.buckets] if args.buckets else [Bucket(args.size, args.size)]
    for b in buckets if cfg.adapter is not None else ():
        b.latent_size(cfg.adapter.latent_factor, cfg.adapter.sr_scale)  # whole latent cells, or the fix
    tae = TinyAutoencoder(args.tae_dir, args.tae).to(device)
    images = load_folder(args.data) if args.data else list(package_images(exclude=DEMO_HELD_OUT).values())
    return PairSampler(images, tae.encode, buckets=[(b.height, b.width) for b in buckets], device=device,
                       crop=args.crop, augment=args.augment)


def _train(args) -> int:
    from pid_sdk.latents import get_latent_space
    from training.trainer import TrainConfig, Trainer, parse_pooled_loss

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
    trainer.fit(_sampler(args, cfg, device), args.out)
    print(f"{args.out}: {trainer.step_count} steps")
    return 0


def _refuse_a_used_folder(out: Path, resume: bool) -> None:
    """A new run in a folder that holds files would mix its checkpoints with theirs."""
    if not resume and out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty.", fix="pass --resume to continue the run there, or choose a new folder")


def _initial_model(args):
    """The run's config and first weights: --preset at random, --init's trained weights, or (--resume) the
    run's own recorded config, whatever --preset says."""
    from dataclasses import replace

    from pid_sdk.checkpoints import load_checkpoint
    from pid_sdk.config import get_preset
    from pid_sdk.model import build_model
    from training.trainer import run_config

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


def _distill(args) -> int:
    from tqdm import tqdm

    from pid_sdk.checkpoints import load_checkpoint
    from pid_sdk.latents import get_latent_space
    from training.distill import DMD2, DistillConfig
    from training.trainer import is_run_folder, load_run_ema

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
    space, sampler = get_latent_space(cfg.latent_space), _sampler(args, cfg, device)
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
    from pid_sdk.checkpoints import save_artefact

    dmd.save(out)
    save_artefact(dmd.student, cfg, out / "student", dtype=torch.float32, source=source, replace_artefact=True)


# --- compare / verify ----------------------------------------------------------------------------------------
def _compare(args) -> int:
    from pid_sdk.compare import compare_folder, summary

    results = compare_folder(args.folder, args.backend, sizes=args.size, steps=args.steps, seed=args.seed,
                             verify=not args.no_verify)
    for r in results:
        print(r)
    print(summary(results))
    if not any(r.status != "skipped" for r in results):
        print("nothing ran: every entry was skipped on this machine", file=sys.stderr)
        return 1
    return 1 if any(r.status == "failed" for r in results) else 0


def _serve(args) -> int:
    checks = [("port", args.port, 1, 65535), ("replicas", args.replicas, 1, 1024),
              ("max_batch", args.max_batch, 1, 256), ("max_queue", args.max_queue, 1, 100000)]
    for name, value, low, high in checks:
        if not low <= value <= high:
            raise InputError(f"--{name.replace('_', '-')} is out of range.", received=value,
                             expected=f"{low} to {high}", fix=f"pass --{name.replace('_', '-')} {max(low, 1)}")
    if args.batch_wait_ms < 0 or args.max_body_mb <= 0 or (args.num_gpus is not None and args.num_gpus < 0):
        raise InputError("--batch-wait-ms, --max-body-mb and --num-gpus must be positive.",
                         received=(args.batch_wait_ms, args.max_body_mb, args.num_gpus), fix="e.g. --batch-wait-ms 10")
    try:
        autoscaling = json.loads(args.autoscaling) if args.autoscaling else None
        assert autoscaling is None or isinstance(autoscaling, dict)
    except (ValueError, AssertionError):
        raise InputError("--autoscaling must be a JSON object.", received=args.autoscaling,
                         fix='--autoscaling \'{"min_replicas": 1, "max_replicas": 4}\'') from None
    try:
        from pid_sdk.serve import ServeOptions, run_server
    except ImportError as exc:
        raise ConfigError("pid-sdk serve needs Ray Serve.", received=str(exc),
                          fix="pip install 'pid-sdk[serve]'") from None
    _check_model(args.model)  # refused here with its message, not as a failed replica
    run_server(ServeOptions(args.model, args.host, args.port, args.replicas, args.max_batch, args.batch_wait_ms,
                            args.backend, int(args.max_body_mb * 2**20), args.max_queue, args.num_gpus, autoscaling,
                            args.address))
    return 0


def _check_model(path: str) -> None:
    """What the replicas will load, checked in this process on the CPU (no GPU memory taken from the replicas):
    an engine folder's manifest and paths, or a model's weights and configuration."""
    from pid_sdk.checkpoints import load_checkpoint
    from pid_sdk.runtime.manifest import is_engine_dir, read_manifest

    if is_engine_dir(path):
        read_manifest(path)
    else:
        load_checkpoint(path)


def _verify(args) -> int:
    from pid_sdk.runtime.integrity import verify_folder

    checks = verify_folder(args.folder)
    for c in checks:
        print(c)
    failed = sum(not c.ok for c in checks)
    print(f"{args.folder}: {len(checks) - failed} of {len(checks)} checks passed")
    return 2 if failed else 0


# --- decode ---------------------------------------------------------------------------------------------------
def _decode(args) -> int:
    from pid_sdk.decoder import Decoder
    from pid_sdk.inputs import check_seed
    from pid_sdk.latent_files import read_latent_file

    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise InputError("The output must be a .png file.", received=str(out), expected="NAME.png",
                         fix=f"pass -o {out.with_suffix('.png')}")
    check_destination(out)
    for name in ("batch_size", "steps"):
        if getattr(args, name) < 1:  # before the progress bar opens
            raise InputError(f"--{name.replace('_', '-')} must be a positive integer.", received=getattr(args, name),
                             expected="1, 2, 3, ..." + (" (default 4)" if name == "steps" else " (default 1)"),
                             fix=f"pass --{name.replace('_', '-')} {4 if name == 'steps' else 1}")
    check_seed(args.seed)
    if args.prompt is not None and not args.text_encoder:
        raise InputError("--prompt needs a text encoder.", received=args.prompt,
                         expected="--text-encoder PATH (a local Gemma-2-2B-it folder)",
                         fix="pass --text-encoder, or --text-embeddings FILE instead of --prompt")
    latents = read_latent_file(args.latent, trust_pickle=args.trust_pickle)
    latents = latents[None] if latents.ndim == 3 else latents
    text = read_latent_file(args.text_embeddings, what="text embeddings") if args.text_embeddings else None
    dec = Decoder.load(args.model, preset=args.preset, device=args.device, precision=args.precision,
                       trust_pickle=args.trust_pickle, text_encoder=args.text_encoder, speed=args.speed,
                       verify=not args.no_verify)
    if latents.ndim == 4 and len(latents) > MAX_FILE_LATENTS:  # a broadcast view makes any count cost nothing to send
        raise InputError(f"The latent file holds {len(latents):,} latents.", received=f"shape {tuple(latents.shape)}",
                         expected=f"at most {MAX_FILE_LATENTS} latents a command",
                         fix="split the file, or decode through the API in a loop")
    size = args.batch_size
    chunks = [latents[i:i + size] for i in range(0, len(latents), size)] if latents.ndim == 4 else [latents]
    for chunk in chunks:  # every chunk refused or accepted before the first one is decoded
        dec.check(chunk, latent_space=args.latent_space, latent_sigma=args.latent_sigma, normalized=not args.raw)
    images = []
    with _progress(len(latents), args.steps, args.quiet) as bar:
        for i, chunk in enumerate(chunks):
            images.extend(dec.decode(chunk, latent_space=args.latent_space, latent_sigma=args.latent_sigma,
                                     prompt=args.prompt, text_embeddings=text, steps=args.steps,
                                     seed=args.seed + i * size, sampler=args.sampler, normalized=not args.raw,
                                     output="pil", on_step=lambda i, n, k=len(chunk): bar.update(k)))  # noqa: B008
    paths = [out] if len(images) == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(len(images))]
    for image, path in zip(images, paths):
        write_png_atomic(image, path)
        print(f"wrote {path} ({image.width}x{image.height})")
    return 0


def _progress(batch: int, steps: int, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=batch * steps, unit="step", desc="decode", disable=quiet, leave=False)


def check_destination(out: Path) -> None:
    """Before any decode: the output can be written where asked (a folder that exists and takes a new file there;
    not a folder itself), proven by creating and removing the temporary file its PNG would be written to."""
    if out.is_dir():
        raise InputError(f"The output {out} is a folder.", received=str(out), expected="a .png file path",
                         fix=f"pass -o {out / 'image.png'}")
    if not out.parent.is_dir():
        exists = out.parent.exists()
        raise InputError(f"The output folder {out.parent} {'is a file, not a folder' if exists else 'does not exist'}.",
                         received=str(out), expected="a path inside an existing folder",
                         fix="choose a path inside a folder" if exists else f"mkdir -p {out.parent}, or choose "
                         "another path")
    os.unlink(_temporary_png(out))


def _temporary_png(path: Path) -> str:
    """A new empty file beside `path`, where its PNG is written before the rename."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".png", dir=path.parent)
        os.close(fd)
        return tmp
    except OSError as exc:
        raise _cannot_write(path, exc) from None


def _cannot_write(path: Path, exc: OSError) -> InputError:
    return InputError(f"Cannot write {path}.", received=f"{type(exc).__name__}: {exc}"[:200],
                      expected="a writable folder with free space",
                      fix="check the folder's permissions and free space, or choose another path")


def write_png_atomic(image, path: Path) -> None:
    """Write beside the target and rename: a failure never leaves a partial PNG."""
    from pid_sdk.checkpoints import usual_permissions

    tmp = _temporary_png(path)
    try:
        image.save(tmp, format="PNG")
        usual_permissions(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _cannot_write(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


if __name__ == "__main__":
    sys.exit(main())
