"""`pid-sdk export`: a model in, an engine folder out (shared weights, ONNX graph sets, manifest)."""

from __future__ import annotations

from pathlib import Path

import torch

from export.onnx_export import export_graph_set
from pid_sdk.buckets import Bucket
from pid_sdk.checkpoints import LoadedModel, load_checkpoint, save_safetensors, sha256_file
from pid_sdk.config import get_preset
from pid_sdk.errors import CheckpointError
from pid_sdk.model import build_model, randomize
from pid_sdk.runtime.engine_set import load_weights
from pid_sdk.runtime.manifest import MANIFEST, Manifest, read_manifest, write_manifest

WEIGHTS = "weights.safetensors"


def load_source(model: str | None, preset: str | None, seed: int, trust_pickle: bool, folder: Path) -> LoadedModel:
    if model:
        return load_checkpoint(model, preset=preset, trust_pickle=trust_pickle)
    if preset:
        cfg = get_preset(preset)
        return LoadedModel(randomize(build_model(cfg), seed), cfg, "random", f"preset:{preset} seed {seed}", [])
    manifest = read_manifest(folder)  # re-export from the folder's own weights
    return LoadedModel(load_weights(folder, manifest), manifest.config, "engine-set", str(folder), [])


def open_or_create(folder: Path, loaded: LoadedModel) -> Manifest:
    """The folder's manifest, after checking it belongs to this model; a new one with the weights otherwise."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS
    if (folder / MANIFEST).exists():
        manifest = read_manifest(folder)
        if manifest.config.backbone != loaded.config.backbone or manifest.config.adapter != loaded.config.adapter:
            raise CheckpointError(f"{folder} holds engines of another model ({manifest.config.name}).",
                                  received=loaded.config.name, fix="export into a new folder")
        return manifest
    tensors = {k: v.detach().float().contiguous() for k, v in loaded.model.state_dict().items()}
    save_safetensors(tensors, weights, metadata={"preset": loaded.config.name, "source": loaded.path})
    manifest = Manifest(loaded.config, sha256_file(weights), [], WEIGHTS)
    write_manifest(folder, manifest)
    return manifest


def export_engine_set(folder: str | Path, *, model: str | None = None, preset: str | None = None, seed: int = 0,
                      sizes: list[Bucket], batch: int = 1, precisions: list[str] = ("fp32",),
                      attention_dtype: str | None = None, trust_pickle: bool = False, calib_latents=None,
                      calib_samples: int = 4, log=print) -> Manifest:
    folder = Path(folder)
    loaded = load_source(model, preset, seed, trust_pickle, folder)
    manifest = open_or_create(folder, loaded)
    for bucket in sizes:
        for precision in precisions:
            scales = None
            if precision.startswith("fp8"):
                scales = fp8_scales(folder, manifest, loaded, bucket, calib_latents, calib_samples, seed, log)
            net = build_model(loaded.config)
            net.load_state_dict(loaded.model.state_dict())
            entry = export_graph_set(net, loaded.config, bucket, folder, batch=batch, precision=precision,
                                     attention_dtype=attention_dtype, fp8_scales=scales, log=log)
            manifest.add(entry)
            write_manifest(folder, manifest)
            del net
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return manifest


def fp8_scales(folder: Path, manifest: Manifest, loaded: LoadedModel, bucket: Bucket, calib_latents, samples: int,
               seed: int, log) -> dict:
    """The bucket's saved scales, or a modelopt calibration over the 4 student steps at the bucket's size."""
    from export.fp8 import calibrate, load_scales, save_scales, student_forward_loop
    from pid_sdk.latents import get_latent_space

    path = folder / f"fp8_scales-{bucket.name}.json"
    if path.exists():
        log(f"using {path.name} (no recalibration)")
        return load_scales(path, manifest.model_sha256)
    cfg = loaded.config
    space = get_latent_space(cfg.latent_space)
    lh, lw = bucket.latent_size(space.factor, cfg.adapter.sr_scale)
    if calib_latents is None:
        gen = torch.Generator().manual_seed(seed)
        calib_latents = [torch.randn(1, space.channels, lh, lw, generator=gen) for _ in range(samples)]
    loop = student_forward_loop(list(calib_latents), bucket.height, bucket.width, cfg.backbone.txt_max_length,
                                cfg.backbone.txt_embed_dim, seed)
    scales = calibrate(loaded.model, loop)
    save_scales(path, scales, model_sha256=manifest.model_sha256, bucket=(bucket.height, bucket.width),
                samples=len(calib_latents))
    log(f"calibrated {len(scales)} layers over {len(calib_latents)} latents x 4 steps -> {path.name}")
    return scales
