"""`pid-sdk`: every command's arguments, declared once here, and each command a short function over the public
API. The build-time commands run in their own packages (`export`, `build`: export/commands.py; `train`,
`distill`: training/commands.py), imported only when one of them runs. Errors print as messages, never as
tracebacks."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

from pid_sdk import __version__
from pid_sdk.config import SHARED_TAE_DIR
from pid_sdk.errors import ConfigError, InputError, PiDError, counted

MAX_FILE_LATENTS = 1024  # images one `pid-sdk decode` writes
SPEED_NAMES = ("reference", "bf16", "fast", "fp8", "fp8-torchao", "fast-autotune", "fp8-attention")  # runtime.speed
OPTION_EXAMPLES = (("--batch-wait-ms", "10"), ("--max-body-mb", "64"), ("--num-gpus", "1"), ("--timeout-s", "30"))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    formatwarning, warnings.formatwarning = warnings.formatwarning, _one_line  # a message, not a line of source
    main_thread = threading.current_thread() is threading.main_thread()  # where Python lets a handler be set
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None  # cleans up as Ctrl-C does
    try:
        _fetch_hub_models(args)
        return _command(args.run)(args)
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
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        warnings.formatwarning = formatwarning


def _fetch_hub_models(args) -> None:
    """Every command's model may be a registry name or hf://OWNER/NAME/PATH: fetched (or found in the Hub cache)
    and converted once, then the command runs on the local artefact (pid_sdk/registry.py)."""
    from pid_sdk import registry

    for attr in ("model", "source"):
        value = getattr(args, attr, None)
        if isinstance(value, str) and registry.is_hub_source(value):
            folder, _ = registry.resolve(value, trust_pickle=getattr(args, "trust_pickle", False))
            setattr(args, attr, str(folder))


def _one_line(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def _interrupt(signum, frame):
    """Unwind as KeyboardInterrupt: every `finally` and temporary folder of the command is cleaned up."""
    raise KeyboardInterrupt


def _command(run):
    """A command function, or "module:function" of a build-time command (imported now, not at start-up)."""
    if callable(run):
        return run
    module, name = run.split(":")
    return getattr(importlib.import_module(module), name)


# --- arguments ------------------------------------------------------------------------------------------------
# Options several commands take, declared once: name -> (flags, argparse keywords).
OPTIONS: dict[str, tuple[tuple[str, ...], dict]] = {
    "trust-pickle": (("--trust-pickle",), dict(action="store_true",
                                               help="allow pickles that run code (trusted files only)")),
    "no-verify": (("--no-verify",), dict(action="store_true", help="load folder files whose manifest lacks their "
                                                                    "sha256 (paths stay confined)")),
    "seed": (("--seed",), dict(type=int, default=0)),
    "preset": (("--preset",), dict(help="a preset with seeded random weights")),
    "engine-sizes": (("--size",), dict(action="append", help="output HEIGHTxWIDTH (repeatable; default: export the "
                                      "sizes the model was trained at, build and compare every exported size)")),
    "data": (("--data",), dict(help="folder of images (default: the photographs that ship inside packages)")),
    "tae": (("--tae",), dict(default="taef1", help="latent encoder: a tiny autoencoder of shared/data/tae")),
    "tae-dir": (("--tae-dir",), dict(default=str(SHARED_TAE_DIR))),
    "crop-size": (("--size",), dict(type=int, default=512, help="square crop side (output pixels)")),
    "buckets": (("--buckets",), dict(nargs="+", metavar="HxW", help="aspect buckets instead of --size, e.g. "
                                     "512x512 384x640 640x384 (images go to the nearest)")),
    "crop": (("--crop",), dict(choices=["random", "centre"], default="random", help="random: crops at several "
                               "scales, flipped half the time; centre: the image's centre")),
    "augment": (("--augment",), dict(action="store_true",
                                     help="turn, mirror and recolour the random crops: more views of a small pool")),
    "latent-noise-prob": (("--latent-noise-prob",), dict(type=float, default=0.5, help="share of samples with a "
                          "noised latent (sigma_latent ~ U[0, 0.8]); lower it to train for clean latents")),
    "resume": (("--resume",), dict(action="store_true", help="continue the run in OUT")),
    "license": (("--license",), dict(help="the weights' licence, recorded in the manifest (default: the artefact's "
                                          "own, from the registry; `pid-sdk models` lists them)")),
}
TRAINING_DATA = ("data", "tae", "tae-dir", "crop-size", "buckets", "crop", "augment", "latent-noise-prob", "resume")


def _add(parser: argparse.ArgumentParser, *names: str) -> None:
    for name in names:
        flags, keywords = OPTIONS[name]
        parser.add_argument(*flags, **keywords)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pid-sdk", description="Run the PiD pixel diffusion decoder.")
    p.add_argument("--version", action="version", version=f"pid-sdk {__version__}")
    sub = p.add_subparsers(required=True, metavar="command")
    for declare in (_info_arguments, _convert_arguments, _decode_arguments, _export_arguments, _build_arguments,
                    _train_arguments, _distill_arguments, _serve_arguments, _compare_arguments, _verify_arguments,
                    _models_arguments, _download_arguments):
        declare(sub)
    for command in sub.choices.values():
        _show_defaults(command)
    return p


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Each option's help ends with its default, where it has one worth saying (not a flag's False)."""
    for action in parser._actions:
        if any(action.default is v for v in (None, False, argparse.SUPPRESS)) or "%(default)" in (action.help or ""):
            continue
        action.help = f"{action.help} (default: %(default)s)" if action.help else "default: %(default)s"


def _info_arguments(sub) -> None:
    p = sub.add_parser("info", help="describe a checkpoint, an artefact, an engine folder or a preset")
    p.add_argument("model", nargs="?", help="checkpoint file, artefact or engine folder")
    p.add_argument("--preset", help="describe a preset instead")
    p.add_argument("--presets", action="store_true", help="list every preset")
    _add(p, "trust-pickle")
    p.set_defaults(run=_info)


def _models_arguments(sub) -> None:
    p = sub.add_parser("models", help="the released PiD checkpoints loadable by name (Hugging Face Hub)")
    p.set_defaults(run=_models)


def _download_arguments(sub) -> None:
    p = sub.add_parser("download", help="fetch a released model into the Hub cache, convert it once, print where")
    p.add_argument("name", help="a name from `pid-sdk models`, or hf://OWNER/NAME/PATH")
    p.add_argument("--revision", help="a branch, tag or commit of the repository (default: main)")
    _add(p, "trust-pickle")
    p.set_defaults(run=_download)


def _convert_arguments(sub) -> None:
    p = sub.add_parser("convert", help="write the SDK artefact (model.safetensors + manifest.json)")
    p.add_argument("source", help="official .pth, safetensors repack, or artefact folder")
    p.add_argument("output", help="new folder for the artefact")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--preset", help="force a preset instead of detecting it from the keys")
    p.add_argument("--latent-space", help="record the latent space the model decodes")
    _add(p, "trust-pickle", "license")
    p.set_defaults(run=_convert)


def _decode_arguments(sub) -> None:
    p = sub.add_parser("decode", help="decode a latent file (.safetensors / .pt / .npy) to PNG")
    p.add_argument("latent", help="latent file: [C, h, w] or [B, C, h, w]")
    p.add_argument("-o", "--output", required=True, help="PNG path (a batch writes NAME_0.png, NAME_1.png, ...)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="artefact folder, checkpoint file or engine folder")
    _add(source, "preset")
    p.add_argument("--latent-space", help="flux1, sd3, sdxl, flux2, qwenimage, dinov2, siglip (default: the model's)")
    p.add_argument("--latent-sigma", type=float, default=0.0, help="noise level of a partially denoised capture")
    p.add_argument("--raw", action="store_true", help="the latent is a raw VAE latent, not normalised")
    p.add_argument("--steps", type=int, help="network calls (default: 4 for the sde / ode student samplers, 50 for the "
                   "teacher)")
    p.add_argument("--sampler", choices=["sde", "ode", "teacher"], default="sde")
    p.add_argument("--guidance", type=float, default=5.0, help="the teacher's text guidance (1: none; other values "
                   "need --text-encoder for the negative prompt)")
    p.add_argument("--prompt", help="caption (needs --text-encoder)")
    p.add_argument("--text-encoder", help="local folder of Gemma-2-2B-it")
    p.add_argument("--text-embeddings", help="file with [L, 2304] or [B, L, 2304] embeddings")
    p.add_argument("--batch-size", type=int, default=1, help="latents decoded together")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "onnxruntime", "aoti", "pytorch"],
                   help="for an engine folder: auto takes the first that runs here, warning why it skips others")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16", "fp8", "fp8-fp32"],
                   help="an engine folder's entries of this precision (refused, listing the entries, where it has "
                   "none); a checkpoint runs fp32 or bf16 (default: fp32 on a CPU, bf16 autocast on CUDA)")
    p.add_argument("--speed", choices=SPEED_NAMES,
                   help="PyTorch backend setting (default reference: fp32 weights, bf16 autocast on CUDA)")
    p.add_argument("--window", help="HxW or auto: decode as overlapping windows of that size (output pixels; auto: "
                   "the largest trained size or engine bucket that fits), for sizes the model or folder lacks")
    p.add_argument("--overlap", type=int, help="pixels neighbouring windows share (default: a quarter of the window)")
    p.add_argument("--max-memory", help="e.g. 16GiB: the estimated peak a decode may reach, weights included; "
                   "larger images decode as windows that fit, and a decode that cannot fit is refused")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no line saying what ran")
    _add(p, "seed", "trust-pickle", "no-verify")
    p.set_defaults(run=_decode)


def _export_arguments(sub) -> None:
    p = sub.add_parser("export", help="export graph sets (text, adapter, denoiser) per size into an engine folder: "
                                      "ONNX or AOTInductor")
    p.add_argument("folder", help="engine folder (created, or extended when it exists)")
    p.add_argument("--model", help="checkpoint or artefact (default: the folder's own weights)")
    _add(p, "preset", "seed", "engine-sizes")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--precision", action="append", choices=["fp32", "bf16", "fp16", "fp8", "fp8-fp32"],
                   help="graph precision (repeatable; default fp32). fp8: FP8 linears in a bf16 graph; "
                   "fp8-fp32: the same in an fp32 graph, which ONNX Runtime runs on a CPU")
    p.add_argument("--calib-samples", type=int, default=4, help="random calibration latents for fp8")
    p.add_argument("--attention-dtype", choices=["fp16", "fp8", "fp8-mha"],
                   help="fp16: attention in fp16 (TensorRT-RTX needs it); fp8: q, k, v rounded to FP8 (calibrated "
                   "Q/DQ), then fp16 attention (with --precision fp8 / fp8-fp32); fp8-mha: the softmax output too, "
                   "the attention written out as TensorRT's FP8 multi-head-attention pattern")
    p.add_argument("--format", choices=["onnx", "aoti"], default="onnx",
                   help="onnx: ONNX graphs (ONNX Runtime, TensorRT builds); aoti: AOTInductor packages for the C ABI "
                   "(bindings/) and backend='aoti'")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="the device AOTInductor packages are compiled for (cuda: on a CUDA host)")
    p.add_argument("--matrix", help="export every precision and attention dtype a build matrix's targets build from "
                   "(engines/matrix.json), for `pid-sdk build --matrix`")
    _add(p, "trust-pickle", "license")
    p.set_defaults(run="export.commands:export")


def _build_arguments(sub) -> None:
    p = sub.add_parser("build", help="build TensorRT / TensorRT-RTX engines from an engine folder's ONNX graphs")
    p.add_argument("folder", help="engine folder with exported ONNX graph sets")
    p.add_argument("--target", action="append", help="rtx5090, rtx4090 (TensorRT-RTX: builds on any machine), "
                   "rtx5090-trt, h100, h200, gb200 (full TensorRT: builds on that GPU); repeatable")
    p.add_argument("--matrix", help="build every target of a build matrix (engines/matrix.json)")
    _add(p, "engine-sizes")
    p.add_argument("--batch", type=int)
    p.add_argument("--precision", action="append", choices=["fp32", "bf16", "fp16", "fp8"])
    p.add_argument("--strip", action="store_true", help="weight-stripped plans, refitted from the ONNX weights")
    p.add_argument("--version-compatible", action="store_true")
    p.add_argument("--hardware-compat", choices=["none", "ampere_plus", "same_compute_capability"], default="none")
    p.add_argument("--timing-cache", help="TensorRT timing cache file, read and updated (reuse it across builds; "
                   "TensorRT-RTX has none: it says so and writes nothing)")
    p.set_defaults(run="export.commands:build")


def _train_arguments(sub) -> None:
    p = sub.add_parser("train", help="train a latent-conditioned decoder (rectified flow) on a folder of images")
    p.add_argument("out", help="run folder (checkpoints: model, ema, trainer state)")
    p.add_argument("--preset", default="demo-flux1")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=2)
    _add(p, *TRAINING_DATA)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lr-decay", type=int, nargs=2, metavar=("START", "END"),
                   help="steps over which the learning rate falls linearly to a tenth")
    p.add_argument("--shift", type=float, default=1.0)
    p.add_argument("--freeze-backbone", action="store_true", help="train only the adapter and its gates")
    p.add_argument("--init", help="start from trained weights (official checkpoint or artefact) instead of --preset")
    p.add_argument("--latent-space", help="with --init: the latent space, where the checkpoint does not say it")
    _add(p, "trust-pickle")
    p.add_argument("--objective", choices=["flow", "rollout"], default="flow",
                   help="rollout: fine-tune a trained run for the 4-step sampler (see training/trainer.py)")
    p.add_argument("--latent-dropout", type=float, default=0.1, help="share of samples with a zero latent")
    p.add_argument("--pooled-loss", nargs="*", metavar="POOL:WEIGHT",
                   help="extra weight on the error average-pooled by POOL, e.g. 8:4 16:8")
    p.add_argument("--gradient-loss", type=float, default=0.0, metavar="WEIGHT",
                   help="extra weight on the error's steps between neighbouring pixels, e.g. 1")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow first step per crop size)")
    p.set_defaults(run="training.commands:train")


def _distill_arguments(sub) -> None:
    p = sub.add_parser("distill", help="DMD2 distillation of a trained decoder to the 4-step student")
    p.add_argument("out", help="run folder: resumable state, and the student as a model artefact in OUT/student")
    p.add_argument("--teacher", required=True, help="a train run folder (its EMA weights) or a model artefact")
    p.add_argument("--steps", type=int, default=200, help="total student updates (a resumed run counts on)")
    p.add_argument("--batch", type=int, default=1)
    _add(p, *TRAINING_DATA)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--lr-student", type=float, default=1e-5)
    p.add_argument("--lr-fake", type=float, default=2e-5)
    p.add_argument("--fake-updates", type=int, default=5, help="fake-score updates per student update")
    p.add_argument("--gan-weight", type=float, default=0.0)
    p.add_argument("--r1-weight", type=float, default=0.0, help="R1 penalty of the GAN head on real images")
    p.add_argument("--recon-weight", type=float, default=0.0,
                   help="pull the student towards the real image too (not in the paper; 0 = plain DMD2)")
    _add(p, "seed")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available; bf16 autocast there)")
    p.add_argument("--save-every", type=int, default=100, help="write the state and the student every N steps")
    p.set_defaults(run="training.commands:distill")


def _serve_arguments(sub) -> None:
    p = sub.add_parser("serve", help="serve the decoder over HTTP with Ray Serve (dynamic batching, replicas)")
    p.add_argument("model", help="anything Decoder.load takes: an artefact, a checkpoint, an engine folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=8, help="requests decoded together at most")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long a batch waits to fill")
    p.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "onnxruntime", "aoti", "pytorch"])
    p.add_argument("--max-queue", type=int, default=64, help="requests a replica holds before answering 503")
    p.add_argument("--max-body-mb", type=float, default=64.0, help="larger request bodies get 413")
    p.add_argument("--num-gpus", type=float, help="GPUs per replica, fractions allowed (default: 1 with a GPU)")
    p.add_argument("--autoscaling", help="Ray Serve autoscaling_config as JSON, e.g. "
                                         "'{\"min_replicas\": 1, \"max_replicas\": 4}'")
    p.add_argument("--address", help="join this Ray cluster (default: start a local Ray instance)")
    p.add_argument("--max-memory", help="e.g. 16GiB per replica: larger requests decode as windows that fit, "
                                        "those that cannot fit get 400")
    p.add_argument("--timeout-s", type=float, help="a request's deadline (504 past it) unless its ?timeout= says")
    p.add_argument("--metrics-port", type=int, help="where Ray exports the Prometheus metrics (ray_pid_*: latency, "
                   "batch sizes, queue depth, errors, images) at /metrics; a local Ray instance only")
    p.add_argument("--warmup", action="append", metavar="HxW", help="an output size each replica decodes once before "
                   "/readyz says ready (repeatable; default: an engine folder's sizes, none for a checkpoint)")
    p.set_defaults(run=_serve)


def _compare_arguments(sub) -> None:
    p = sub.add_parser("compare", help="parity of an engine folder's backend against its PyTorch reference")
    p.add_argument("folder", help="engine folder")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt", "aoti"])
    p.add_argument("--steps", type=int, default=4)
    _add(p, "engine-sizes", "seed", "no-verify")
    p.add_argument("--windowed", action="append", metavar="HxW", help="also decode this output size as windows of "
                   "each entry's size, against the PyTorch windowed decode (repeatable)")
    p.set_defaults(run=_compare)


def _verify_arguments(sub) -> None:
    p = sub.add_parser("verify", help="check an engine folder's files (confined, present, hashed, plan headers) "
                                      "without running anything")
    p.add_argument("folder", help="engine folder")
    p.set_defaults(run=_verify)


# --- info -----------------------------------------------------------------------------------------------------
def _info(args) -> int:
    from pid_sdk.config import PRESETS, get_preset
    from pid_sdk.runtime.manifest import is_engine_dir, read_engine_manifest

    if args.presets:
        from pid_sdk.checkpoints import read_artefact_manifest
        from pid_sdk.config import DEMO_MODEL

        for name, cfg in PRESETS.items():
            print(f"{name:32s} {cfg.description}")
        shipped = read_artefact_manifest(DEMO_MODEL)  # grown from demo-flux1: its own config, its own size
        print(f"{'DEMO_MODEL (shipped weights)':32s} {shipped['config']['description']}")
        return 0
    if args.preset:
        cfg, params, source = get_preset(args.preset), None, "preset"
    elif args.model and is_engine_dir(args.model):
        from pid_sdk.registry import UNKNOWN

        manifest = read_engine_manifest(args.model)
        print(describe(manifest.config, None, f"engine folder {args.model}"))
        print(f"licence:       {manifest.license or UNKNOWN}")
        print(f"{counted(len(manifest.entries), 'entry')}:")
        print(entry_table(manifest.entries))
        return 0
    elif args.model:
        from pid_sdk.checkpoints import load_checkpoint

        from pid_sdk.registry import UNKNOWN

        loaded = load_checkpoint(args.model, trust_pickle=args.trust_pickle)
        cfg, source = loaded.config, f"{loaded.source} ({loaded.path})"
        params = sum(p.numel() for p in loaded.model.parameters())
        licence = (loaded.manifest or {}).get("license") or UNKNOWN
    else:
        raise InputError("info needs a model path, --preset NAME or --presets.", fix="pid-sdk info model.pth")
    print(describe(cfg, params, source))
    if args.model:
        print(f"licence:       {licence}")
    return 0


def _models(args) -> int:
    from pid_sdk.registry import REGISTRY

    rows = [("name", "repository / file", "latent", "scale", "trained up to", "RoPE ref", "licence")]
    for e in REGISTRY:
        largest = max(e.trained_sizes, key=lambda s: s[0] * s[1])
        rows.append((e.name, f"{e.repo}/{e.file}", e.latent_space, f"x{e.scale}", f"{largest[0]}x{largest[1]}",
                     str(e.rope_ref), e.license.split(" ")[0] + (f" ({e.note})" if e.note else "")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print("\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows))
    print("load: Decoder.load('nvidia/PiD', variant=NAME), Decoder.load(NAME), or --model NAME on the command line;\n"
          "licences in full: pid-sdk info NAME")
    return 0


def _download(args) -> int:
    from pid_sdk import registry

    folder, entry = registry.resolve(args.name, revision=args.revision, trust_pickle=args.trust_pickle)
    print(f"{entry.url} -> {folder}")
    print(f"licence: {entry.license}")
    return 0


def entry_table(entries) -> str:
    """An engine folder's entries, a row each: what runs it, for which size, batch and precision, built for what."""
    rows = [("entry", "backend", "size", "batch", "precision", "attention", "built for")]
    for e in entries:
        built = {"onnx": "any ONNX Runtime", "aoti": f"{e.target}, torch {e.torch_version}"}.get(
            e.backend, f"sm {', '.join(map(str, e.sm))}, {e.backend} {e.trt_version}" + (", stripped" * e.stripped))
        rows.append((e.key, e.backend, f"{e.bucket[0]}x{e.bucket[1]}", str(e.batch), e.precision,
                     e.attention_dtype or "as the graph", built))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def describe(cfg, params: int | None, source: str) -> str:
    from pid_sdk.memory import estimate_memory, format_bytes
    from pid_sdk.model import parameter_count

    params = parameter_count(cfg) if params is None else params
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
    window = max(cfg.trained_sizes, key=lambda s: s[0] * s[1])  # what window="auto" takes for larger outputs
    lines.append("memory (estimated peak, bf16 weights and activations, batch 1; decode(max_memory=) keeps to it):")
    for side in (1024, 2048, 4096, 8192):
        m, w = estimate_memory(cfg, params, side, side), estimate_memory(cfg, params, side, side, window=window)
        lines.append(f"  {side}x{side}: {format_bytes(m.total)} whole (activations {format_bytes(m.activations)})"
                     + (f"; {format_bytes(w.total)} as windows of {window[0]}x{window[1]}"
                        if side * side > window[0] * window[1] else ""))
    return "\n".join(lines)


# --- convert --------------------------------------------------------------------------------------------------
def _convert(args) -> int:
    import torch

    from pid_sdk.checkpoints import load_checkpoint, save_artefact

    loaded = load_checkpoint(args.source, preset=args.preset, trust_pickle=args.trust_pickle)
    if args.latent_space:
        from pid_sdk.latents import get_latent_space

        get_latent_space(args.latent_space)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    out = save_artefact(loaded.model, loaded.config, args.output, dtype=dtype,
                        source=f"{loaded.source}:{Path(args.source).name}", latent_space=args.latent_space,
                        license=args.license or (loaded.manifest or {}).get("license"))
    print(f"wrote {out} ({loaded.config.name}, {args.dtype}, {len(loaded.dropped)} training-only tensors dropped)")
    return 0


# --- compare / verify ----------------------------------------------------------------------------------------
def _compare(args) -> int:
    from pid_sdk.compare import compare_folder, summary
    from pid_sdk.inputs import MAX_COMPARE_STEPS, check_int

    check_int("--steps", args.steps, 1, MAX_COMPARE_STEPS, "4 (default), or 1, 2, 3, ...")

    results = compare_folder(args.folder, args.backend, sizes=args.size, steps=args.steps, seed=args.seed,
                             verify=not args.no_verify, windowed=args.windowed,
                             log=lambda line: print(line, flush=True))  # as each ends
    print(summary(results))
    if not any(r.status != "skipped" for r in results):
        print("nothing ran: every entry was skipped on this machine", file=sys.stderr)
        return 1
    return 1 if any(r.status == "failed" for r in results) else 0


def _serve(args) -> int:
    from pid_sdk.inputs import check_int

    for name, high in (("port", 65535), ("replicas", 1024), ("max_batch", 256), ("max_queue", 100000)):
        check_int(f"--{name.replace('_', '-')}", getattr(args, name), 1, high, "1, 2, 3, ...")
    if args.metrics_port is not None:
        check_int("--metrics-port", args.metrics_port, 1, 65535, "8080")
    for flag, value, low, high in (("--batch-wait-ms", args.batch_wait_ms, 0, 60_000),
                                   ("--max-body-mb", args.max_body_mb, 1e-3, 4096),
                                   ("--timeout-s", 1 if args.timeout_s is None else args.timeout_s, 1e-3, 3600),
                                   ("--num-gpus", 1 if args.num_gpus is None else args.num_gpus, 0, 64)):
        if not (math.isfinite(value) and low <= value <= high):  # nan passes every comparison but this one
            raise InputError(f"{flag} is out of range.", received=value, expected=f"a number in [{low}, {high}]",
                             fix=f"e.g. {flag} {dict(OPTION_EXAMPLES)[flag]}")
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
    max_memory = _memory(args.max_memory)
    _check_model(args.model)  # refused here with its message, not as a failed replica
    run_server(ServeOptions(args.model, args.host, args.port, args.replicas, args.max_batch, args.batch_wait_ms,
                            args.backend, int(args.max_body_mb * 2**20), args.max_queue, args.num_gpus, autoscaling,
                            args.address, max_memory=max_memory, timeout_s=args.timeout_s,
                            warmup=_warmup_sizes(args.warmup), metrics_port=args.metrics_port))
    return 0


def _warmup_sizes(texts: list[str] | None) -> tuple[tuple[int, int], ...] | None:
    from pid_sdk.buckets import Bucket

    return None if texts is None else tuple((b.height, b.width) for b in map(Bucket.parse, texts))


def _memory(text: str | None) -> int | None:
    from pid_sdk.memory import parse_memory

    return None if text is None else parse_memory(text, "--max-memory")


def _check_model(path: str) -> None:
    """What the replicas will load, checked in this process on the CPU (no GPU memory taken from the replicas):
    an engine folder's manifest and paths, or a model's weights and configuration."""
    from pid_sdk.checkpoints import load_checkpoint
    from pid_sdk.runtime.manifest import is_engine_dir, read_engine_manifest

    if is_engine_dir(path):
        read_engine_manifest(path)
    else:
        load_checkpoint(path)


def _verify(args) -> int:
    from pid_sdk.registry import license_of
    from pid_sdk.runtime.integrity import verify_folder

    checks = verify_folder(args.folder)
    print(f"licence: {license_of(args.folder)}")
    for c in checks:
        print(c)
    failed = sum(not c.ok for c in checks)
    print(f"{args.folder}: {len(checks) - failed} of {counted(len(checks), 'check')} passed")
    return 2 if failed else 0


# --- decode ---------------------------------------------------------------------------------------------------
def _decode(args) -> int:
    from pid_sdk.decoder import Decoder
    from pid_sdk.image_files import check_destination, write_png_atomic
    from pid_sdk.inputs import MAX_STEPS, check_guidance, check_int, check_seed
    from pid_sdk.latent_files import read_latent_file

    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise InputError("The output must be a .png file.", received=str(out), expected="NAME.png",
                         fix=f"pass -o {out.with_suffix('.png')}")
    check_destination(out)
    check_int("--batch-size", args.batch_size, 1, MAX_FILE_LATENTS, "1 (default), 2, 4, ...")  # before the bar opens
    if args.steps is not None:
        check_int("--steps", args.steps, 1, MAX_STEPS, "4 (default), or 1, 2, 3, ...")
    check_seed(args.seed)
    check_guidance(args.guidance)
    if args.prompt is not None and not args.text_encoder:
        raise InputError("--prompt needs a text encoder.", received=args.prompt,
                         expected="--text-encoder PATH (a local Gemma-2-2B-it folder)",
                         fix="pass --text-encoder, or --text-embeddings FILE instead of --prompt")
    latents = read_latent_file(args.latent, trust_pickle=args.trust_pickle)
    latents = latents[None] if latents.ndim == 3 else latents
    count = len(latents) if latents.ndim == 4 else 1  # another rank is refused by the decoder's check below
    if count > MAX_FILE_LATENTS:  # a broadcast view makes any count cost nothing to send
        raise InputError(f"The latent file holds {count:,} latents.", received=f"shape {tuple(latents.shape)}",
                         expected=f"at most {MAX_FILE_LATENTS} latents a command",
                         fix="split the file, or decode through the API in a loop")
    check_seed([args.seed + i for i in range(count)], count)  # seed + index, for every latent
    text = read_latent_file(args.text_embeddings, what="text embeddings") if args.text_embeddings else None
    dec = Decoder.load(args.model, preset=args.preset, backend=args.backend, device=args.device,
                       precision=args.precision, trust_pickle=args.trust_pickle, text_encoder=args.text_encoder,
                       speed=args.speed, verify=not args.no_verify, max_memory=_memory(args.max_memory))
    size = args.batch_size
    starts = range(0, count, size) if latents.ndim == 4 else [0]
    chunks = [latents[i:i + size] if latents.ndim == 4 else latents for i in starts]
    with warnings.catch_warnings():  # the decode says its warnings once: not again for this check
        warnings.simplefilter("ignore")
        for chunk in chunks:  # every chunk refused or accepted before the first one is decoded
            dec.check(chunk, latent_space=args.latent_space, latent_sigma=args.latent_sigma, normalized=not args.raw)
    from pid_sdk.windows import parse_window

    window = parse_window(args.window)
    paths = output_paths(out, count)
    steps = args.steps or dec.default_steps(args.sampler)
    with _progress(count, steps, args.quiet) as bar:
        for start, chunk in zip(starts, chunks):
            # one seed per latent (seed + its index in the file): an image does not depend on --batch-size
            images = dec.decode(chunk, latent_space=args.latent_space, latent_sigma=args.latent_sigma,
                                prompt=args.prompt, text_embeddings=_rows(text, start, len(chunk), count),
                                steps=steps, seed=[args.seed + start + i for i in range(len(chunk))],
                                sampler=args.sampler, guidance=args.guidance, normalized=not args.raw, output="pil",
                                window=window, overlap=args.overlap,
                                on_step=lambda i, n, k=len(chunk): bar.update(k))  # noqa: B008
            for image, path in zip(images, paths[start:]):  # written as each chunk finishes
                write_png_atomic(image, path)
                bar.write(f"wrote {path} ({image.width}x{image.height})", file=sys.stdout)
    if not args.quiet:
        print(f"ran: {engine_line(dec.engine)}")
    return 0


def engine_line(engine: dict) -> str:
    """`Decoder.engine` in one line: the entry (an engine folder's), backend, provider and precision."""
    entry = f"{engine['entry']} on " if engine["entry"] else ""
    return f"{entry}{engine['backend']} ({engine['provider']}), precision {engine['precision']}"



def output_paths(out: Path, count: int) -> list[Path]:
    """NAME.png for one image, NAME_0.png, NAME_1.png, ... for a batch."""
    return [out] if count == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(count)]


def _rows(text, start: int, count: int, total: int):
    """The text embeddings of one chunk: its own rows where the file holds one embedding per latent."""
    if text is None or text.ndim != 3 or text.shape[0] != total or total == 1:
        return text
    return text[start:start + count]


def _progress(batch: int, steps: int, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=batch * steps, unit="step", desc="decode", disable=quiet, leave=False)


if __name__ == "__main__":
    sys.exit(main())
