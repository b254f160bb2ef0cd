"""`pid-sdk export`: a model in, an engine folder out (shared weights, ONNX graph sets, manifest)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from export.aoti_export import check_aoti_options, export_aoti_set
from export.onnx_export import FP8_ATTENTION, export_graph_set
from pid_sdk.buckets import Bucket, trained_buckets
from pid_sdk.checkpoints import (LoadedModel, load_checkpoint, read_safetensors, save_safetensors, sha256_file,
                                 usual_permissions)
from pid_sdk.config import get_preset
from pid_sdk.errors import CheckpointError, ConfigError, InputError, counted
from pid_sdk.model import build_model, randomize
from pid_sdk.runtime.open_folder import load_weights
from pid_sdk.runtime.manifest import MANIFEST, Manifest, read_engine_manifest, verify_weights, write_manifest

WEIGHTS = "weights.safetensors"


def load_source(model: str | None, preset: str | None, seed: int, trust_pickle: bool, folder: Path) -> LoadedModel:
    if model:
        return load_checkpoint(model, preset=preset, trust_pickle=trust_pickle)
    if preset:
        cfg = get_preset(preset)
        return LoadedModel(randomize(build_model(cfg), seed), cfg, "random", f"preset:{preset} seed {seed}", [])
    manifest = read_engine_manifest(folder)  # re-export from the folder's own weights
    return LoadedModel(load_weights(folder, manifest), manifest.config, "engine-set", str(folder), [])


FORMATS = ("onnx", "aoti")


Variant = tuple[str, "str | None"]  # (graph precision, attention dtype; None: the graph's own)


def check_options(format: str, device: str, variants: list[Variant], batch: int) -> None:
    """The options that need no model, checked before one is loaded (a 1.3B checkpoint takes a while)."""
    from pid_sdk.inputs import check_int

    check_int("batch", batch, 1, 64, "1 (default), 2, 4, ...")
    if format not in FORMATS:
        raise ConfigError("Unknown export format.", received=format, expected=", ".join(FORMATS),
                          fix="pass --format onnx (TensorRT, ONNX Runtime) or --format aoti (the C ABI)")
    if format != "aoti" and device != "cpu":
        raise ConfigError("--device applies to AOTInductor packages.", received=device,
                          fix="drop --device for ONNX graphs (they run on any device), or pass --format aoti")
    for precision, attention_dtype in variants:
        if format == "aoti" and attention_dtype:
            raise ConfigError("--attention-dtype applies to ONNX graphs.", received=attention_dtype,
                              fix="drop --attention-dtype with --format aoti")
        if format == "aoti":
            check_aoti_options(device, precision)
        elif attention_dtype in FP8_ATTENTION and not precision.startswith("fp8"):
            raise ConfigError("FP8 attention goes with FP8 graphs.", received=f"precision {precision}",
                              expected="--precision fp8 (bf16 graph) or fp8-fp32 (its ONNX Runtime CPU twin)",
                              fix=f"pass --precision fp8 with --attention-dtype {attention_dtype}")


def check_sizes(sizes: list[Bucket], batch: int, cfg) -> None:
    """Every size, before anything is written: whole latent cells, at least one, within the decoder's limits."""
    from pid_sdk.inputs import MAX_OUTPUT_SIDE, MAX_PIXELS
    from pid_sdk.latents import get_latent_space

    if cfg.adapter is None:
        raise ConfigError(f"{cfg.name} is the bare PixelDiT backbone: it has no decoder graphs to export.",
                          fix="export a PiD model (with its latent adapter)")
    if not sizes:
        raise InputError("No size to export.", expected="--size HEIGHTxWIDTH", fix="pass --size 2048x2048")
    space = get_latent_space(cfg.latent_space)
    step = space.factor * cfg.adapter.sr_scale
    for b in sizes:
        if not (step <= b.height <= MAX_OUTPUT_SIDE and step <= b.width <= MAX_OUTPUT_SIDE):
            raise InputError(f"Cannot export a {b.name} graph set.", received=b.name,
                             expected=f"sides from {step} to {MAX_OUTPUT_SIDE} pixels, multiples of {step}",
                             fix="pass --size 2048x2048 (or another bucket of the model)")
        b.latent_size(space.factor, cfg.adapter.sr_scale)
        if batch * b.height * b.width > MAX_PIXELS:
            raise InputError(f"A {b.name} graph set at batch {batch} exceeds the decoder's pixel limit.",
                             received=f"{batch * b.height * b.width:,} pixels", expected=f"<= {MAX_PIXELS:,}",
                             fix="export a smaller batch")


def open_or_create(folder: Path, work: Path, loaded: LoadedModel) -> Manifest:
    """The folder's manifest, after checking it belongs to this model; else a new one, with the weights, in
    `work` (the temporary folder that becomes the engine folder once the export succeeds)."""
    if (folder / MANIFEST).exists():
        manifest = read_engine_manifest(folder)
        if manifest.config.backbone != loaded.config.backbone or manifest.config.adapter != loaded.config.adapter:
            raise CheckpointError(f"{folder} holds engines of another model ({manifest.config.name}).",
                                  received=loaded.config.name, fix="export into a new folder")
        if loaded.source != "engine-set":  # the folder's own weights need no comparison
            check_same_weights(folder, manifest, loaded)
        return manifest
    if folder.exists() and any(folder.iterdir()):
        raise CheckpointError(f"{folder} is not empty and holds no engine set.", fix="export into a new folder")
    tensors = {k: v.detach().float().contiguous() for k, v in loaded.model.state_dict().items()}
    save_safetensors(tensors, work / WEIGHTS, metadata={"preset": loaded.config.name, "source": loaded.path})
    licence = (loaded.manifest or {}).get("license")  # the artefact's (pid_sdk/registry.py), else unknown
    return Manifest(loaded.config, sha256_file(work / WEIGHTS), [], WEIGHTS, licence)


def check_same_weights(folder: Path, manifest: Manifest, loaded: LoadedModel) -> None:
    """Refuse weights other than the folder's: its graphs, plans and `model_sha256` all describe one set of weights,
    and a second model of the same architecture would silently mix with them."""
    stored = read_safetensors(verify_weights(folder, manifest))
    new = loaded.model.state_dict()
    differ = [k for k, v in new.items() if k not in stored or not torch.equal(v.detach().float(), stored[k])]
    if differ:
        raise CheckpointError(f"{folder} holds engines of other weights ({manifest.config.name}, weights sha256 "
                              f"{manifest.model_sha256[:12]}...).",
                              received=f"{loaded.path}: {len(differ)} of {len(new)} tensors differ, e.g. {differ[0]}",
                              expected="the weights the folder was exported from",
                              fix="export this model into a new folder (one engine folder holds one model's weights), "
                                  "or leave --model out to add sizes from the folder's own weights")


def export_engine_set(folder: str | Path, *, model: str | None = None, preset: str | None = None, seed: int = 0,
                      sizes: list[Bucket] | None = None, batch: int = 1, precisions: list[str] = ("fp32",),
                      attention_dtype: str | None = None, variants: list[Variant] | None = None,
                      trust_pickle: bool = False, calib_latents=None, calib_samples: int = 4, format: str = "onnx",
                      device: str = "cpu", license: str | None = None, log=print) -> Manifest:
    """Export into a temporary folder, then move the result into place: a failed export leaves the folder as it
    was (nothing at all for a new one). `format`: "onnx" graphs (ONNX Runtime, TensorRT builds) or "aoti"
    AOTInductor packages compiled for `device` (the C ABI, backend="aoti"). `variants` (precision, attention
    dtype) replaces `precisions` x `attention_dtype`: every graph set a build matrix needs, in one export.
    `sizes` defaults to the sizes the model was trained at; `license` records the weights' licence (default: the
    artefact's own, from the registry)."""
    folder = Path(folder)
    variants = list(variants or [(p, attention_dtype) for p in precisions])
    check_options(format, device, variants, batch)
    loaded = load_source(model, preset, seed, trust_pickle, folder)
    trained = sizes is None
    sizes = list(trained_buckets(loaded.config)) if trained else sizes
    check_sizes(sizes, batch, loaded.config)
    log(f"exporting {counted(len(sizes) * len(variants), 'graph set')} ({format}): "
        f"{', '.join(b.name for b in sizes)}" + (" (the model's trained sizes: --size HxW picks others)" * trained)
        + f" x {', '.join(p + (f' attention {a}' if a else '') for p, a in variants)}")
    new = not (folder / MANIFEST).exists()
    parent = folder.parent if new else folder
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-export-", dir=parent))
    try:
        manifest = open_or_create(folder, work, loaded)
        manifest.license = license or manifest.license
        progress = Progress(len(sizes) * len(variants), "graph set")
        for bucket in sizes:
            for precision, attention_dtype in variants:
                scales, attention_scales = None, None
                calibration = (folder, work, manifest, loaded, bucket, calib_latents, calib_samples, seed, log)
                if precision.startswith("fp8"):
                    scales = fp8_scales(*calibration)
                if attention_dtype in FP8_ATTENTION:  # both forms use the same amax of q, k and v
                    attention_scales = fp8_scales(*calibration, kind="attention")
                net = build_model(loaded.config)
                net.load_state_dict(loaded.model.state_dict())
                if format == "aoti":
                    entry = export_aoti_set(net, loaded.config, bucket, work, batch=batch, device=device,
                                            precision=precision, log=log)
                else:
                    entry = export_graph_set(net, loaded.config, bucket, work, batch=batch, precision=precision,
                                             attention_dtype=attention_dtype, fp8_scales=scales,
                                             attention_scales=attention_scales, log=log)
                manifest.add(entry)
                log(progress.done(f"{bucket.name} {entry.variant}"))
                del net
        _move_into_place(work, folder, manifest, new)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return manifest


class Progress:
    """'graph set 2 of 10 (KEY) in 41 s; about 5 min left': the estimate is the mean time of the units done so far
    (sizes differ in cost, so it is rough until a few are done)."""

    def __init__(self, total: int, unit: str):
        self.total, self.unit, self.count, self.started = total, unit, 0, time.perf_counter()
        self.last = self.started

    def done(self, what: str) -> str:
        now = time.perf_counter()
        self.count, took, self.last = self.count + 1, now - self.last, now
        left = (now - self.started) / self.count * (self.total - self.count)
        return (f"{self.unit} {self.count} of {self.total} ({what}) in {took:.0f} s"
                + (f"; about {_duration(left)} left" if self.count < self.total else ""))


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _move_into_place(work: Path, folder: Path, manifest: Manifest, new: bool) -> None:
    usual_permissions(work, 0o777)  # mkdtemp makes a 0700 folder
    if new:
        write_manifest(work, manifest)
        if folder.exists():
            folder.rmdir()  # empty (checked in open_or_create)
        os.replace(work, folder)
        return
    for path in sorted(work.rglob("*")):
        if path.is_file():
            target = folder / path.relative_to(work)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    write_manifest(folder, manifest)


def fp8_scales(folder: Path, work: Path, manifest: Manifest, loaded: LoadedModel, bucket: Bucket, calib_latents,
               samples: int, seed: int, log, kind: str = "linears") -> dict:
    """The bucket's saved scales, or a calibration over the 4 student steps at the bucket's size (saved in `work`,
    moved into the folder with the export). `kind`: "linears" (modelopt, the FP8 linear layers) or "attention"
    (the amax of every attention's q, k and v)."""
    from export.fp8 import calibrate, calibrate_attention, load_scales, save_scales, student_forward_loop
    from pid_sdk.flops import decode_flops, matmul_rate, time_floor
    from pid_sdk.latents import get_latent_space

    name = f"fp8_scales-{bucket.name}.json" if kind == "linears" else f"fp8_attention_scales-{bucket.name}.json"
    for path in (folder / name, work / name):
        if path.exists():
            log(f"using {path.name} (no recalibration)")
            return load_scales(path, manifest.model_sha256)
    path = work / name
    cfg = loaded.config
    space = get_latent_space(cfg.latent_space)
    lh, lw = bucket.latent_size(space.factor, cfg.adapter.sr_scale)
    if calib_latents is None:
        gen = torch.Generator().manual_seed(seed)
        calib_latents = [torch.randn(1, space.channels, lh, lw, generator=gen) for _ in range(samples)]
    floor = time_floor(len(calib_latents) * decode_flops(cfg, bucket.height, bucket.width).per_decode, matmul_rate())
    log(f"calibrating FP8 {kind} at {bucket.name}: {len(calib_latents)} latents x 4 steps of the PyTorch model"
        + (f", {floor}" if floor else ""))
    loop = student_forward_loop(list(calib_latents), bucket.height, bucket.width, cfg.backbone.txt_max_length,
                                cfg.backbone.txt_embed_dim, seed)
    scales = (calibrate if kind == "linears" else calibrate_attention)(loaded.model, loop)
    save_scales(path, scales, model_sha256=manifest.model_sha256, bucket=(bucket.height, bucket.width),
                samples=len(calib_latents))
    log(f"calibrated {len(scales)} {kind} over {len(calib_latents)} latents x 4 steps -> {path.name}")
    return scales
