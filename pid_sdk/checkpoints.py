"""Reading weights: official PiD / PixelDiT `.pth`, safetensors repacks, and the SDK's own artefact.

Every form is mapped to the official key names, the configuration is read off the keys and shapes, the model is
built on the meta device and the tensors are assigned (never copied), and the load is strict.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from pid_sdk.config import ADAPTER_V1, ADAPTER_V1PT5, OFFICIAL_PRESETS, PIXELDIT, PRESETS, PiDConfig, get_preset
from pid_sdk.errors import CheckpointError, UnsafeCheckpointError
from pid_sdk.model import build_model

MODEL_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
ARTEFACT_FORMAT = "pid-sdk-model"
ARTEFACT_VERSION = 1

_SKIP_PREFIXES = ("net_ema.", "fake_score.", "discriminator.", "_repa_projector.", "lq_proj.lq_aux_rgb_head.")
_STRIP_PREFIXES = ("model.diffusion_model.", "net.", "core.", "module.")
_SPLIT_ADALN = re.compile(r"^(pixel_blocks\.\d+)\.adaLN_modulation_(msa|mlp)(?:\.0)?\.(weight|bias)$")


@dataclass
class LoadedModel:
    model: nn.Module
    config: PiDConfig
    source: str  # official-pid, original-pixeldit, safetensors, artefact
    path: str
    dropped: list[str]  # training-only keys that were read and ignored
    manifest: dict | None = None


# --- reading files --------------------------------------------------------------------------------------------
def read_file(path: str | Path, *, trust_pickle: bool = False, what: str = "checkpoint") -> dict:
    """Raw mapping from a .pth/.pt/.ckpt/.bin or .safetensors file, loaded without running untrusted code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No {what} at {path}" + (" (it is a folder)." if path.is_dir() else "."),
                              fix="check the path")
    if path.stat().st_size == 0:
        raise CheckpointError(f"The {what} {path} is empty (0 bytes).", expected=f"a {what} file",
                              fix="download or convert it again")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return _read_pickle(path, trust_pickle)


def read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated headers and data
        raise CheckpointError(f"Cannot read {path} as safetensors: it is truncated or corrupt.",
                              received=f"{path.stat().st_size} bytes ({exc})", expected="a complete safetensors file",
                              fix="download or convert it again") from None


def _read_pickle(path: Path, trust_pickle: bool) -> dict:
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy non-zip format
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # the weights-only unpickler met bytes, not a class it refuses
            raise _corrupt(path, exc) from None
        if not trust_pickle:
            raise UnsafeCheckpointError(
                f"{path} holds Python objects that can only be loaded by running code from the file.",
                received=next((line.strip() for line in str(exc).splitlines() if "Unsupported global" in line),
                              "")[:300],
                expected="plain tensors (loadable with torch.load(weights_only=True))",
                fix="only if you trust the file's origin: pass trust_pickle=True (CLI: --trust-pickle); "
                "better, convert it once with `pid-sdk convert --trust-pickle` and use the safetensors artefact",
            ) from None
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as full:
            raise _corrupt(path, full) from None
    except Exception as exc:  # the unpickler fails on corrupt bytes with many error types
        raise _corrupt(path, exc) from None


def _corrupt(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(f"Cannot read {path}: it is corrupt, truncated or not a file written by torch.save.",
                           received=f"{path.stat().st_size} bytes ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0][:160] if str(exc) else ''})",
                           expected="a file written by torch.save", fix="download or convert it again")


# --- key normalisation ----------------------------------------------------------------------------------------
def canonical_state_dict(raw: dict) -> tuple[dict[str, Tensor], str, list[str]]:
    """Official key names from any supported layout. Returns (state dict, detected source, dropped keys)."""
    source = "safetensors"
    if isinstance(raw.get("state_dict"), dict):
        raw, source = raw["state_dict"], "original-pixeldit"
    tensors = {k: v for k, v in raw.items() if isinstance(v, Tensor)}
    if any(k.startswith("net.") for k in tensors):
        source = "official-pid"
    out, dropped, split = {}, [], {}
    for key, value in tensors.items():
        if key.startswith(_SKIP_PREFIXES) or key == "pos_embed":
            dropped.append(key)
            continue
        key = _strip_prefix(key)
        if key.startswith(_SKIP_PREFIXES) or key == "pos_embed":
            dropped.append(key)
        elif m := _SPLIT_ADALN.match(key):
            split.setdefault((m[1], m[3]), {})[m[2]] = value
        else:
            out[key] = value
    pixel_hidden = out["pixel_embedder.proj.weight"].shape[0] if "pixel_embedder.proj.weight" in out else 16
    for (block, kind), halves in split.items():
        out[f"{block}.adaLN_modulation.0.{kind}"] = _merge_adaln(halves, block, pixel_hidden)
    return out, source, dropped


def _strip_prefix(key: str) -> str:
    for prefix in _STRIP_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _merge_adaln(halves: dict[str, Tensor], block: str, channels: int) -> Tensor:
    """Undo ComfyUI's split of the per-pixel adaLN: per pixel, chunks 0-2 come from msa and 3-5 from mlp."""
    if set(halves) != {"msa", "mlp"}:
        raise CheckpointError(f"{block}: only one half of the split adaLN_modulation is present.",
                              received=sorted(halves), expected="['mlp', 'msa']", fix="use a complete checkpoint")
    msa, mlp = halves["msa"], halves["mlp"]
    tail = msa.shape[1:]
    pixels = msa.shape[0] // (3 * channels)
    merged = torch.cat([msa.reshape(pixels, 3, channels, *tail), mlp.reshape(pixels, 3, channels, *tail)], 1)
    return merged.reshape(2 * msa.shape[0], *tail)  # [pixels * 6 * channels, ...]


# --- configuration from keys and shapes -----------------------------------------------------------------------
_LATENTS_BY_CHANNELS = {  # conv input channels -> (latent channels, factor, sr_scale, unpatchify, latent space)
    ("v1", 16): (16, 8, 4, 1, "flux1"),
    ("v1", 4): (4, 8, 4, 1, "sdxl"),
    ("v1", 128): (128, 16, 4, 1, "flux2"),
    ("v1", 768): (768, 16, 4, 1, "dinov2"),
    ("v1", 1152): (1152, 16, 8, 1, "siglip"),
    ("v1.5", 16): (16, 8, 4, 1, "flux1"),
    ("v1.5", 32): (128, 16, 4, 2, "flux2"),
}


def infer_config(sd: dict[str, Tensor], hint: str = "", source: str = "") -> PiDConfig:
    """Build the configuration that the keys and shapes describe, named after the official preset it equals."""
    if "s_embedder.proj.weight" not in sd:
        sample = ", ".join(sorted(sd)[:6]) or "(no tensors)"
        raise CheckpointError("This file is not a PiD or PixelDiT checkpoint.", received=f"keys like {sample}",
                              expected="keys such as s_embedder.proj.weight, patch_blocks.0.attn.qkv_x.weight",
                              fix="pass an official PiD / PixelDiT checkpoint, a safetensors repack or an SDK artefact")
    try:
        backbone = _infer_backbone(sd)
        adapter, version, space = _infer_adapter(sd, backbone)
    except (KeyError, IndexError) as exc:
        raise CheckpointError("The checkpoint is missing tensors every PiD variant has.", received=f"no {exc}",
                              fix="the file is incomplete or of another model; use the official file") from None
    if adapter is None:
        ntk = source == "official-pid" or "2kto4k" in hint.lower()
        backbone = replace(backbone, rope_mode="ntk" if ntk else "plain", rope_ref=2048 if ntk else 1024)
    else:
        ref = 2048 if version == "v1.5" else 1024
        backbone = replace(backbone, rope_mode="ntk", rope_ref=ref)
        space = _space_from_hint(hint) or space
    cfg = PiDConfig("custom", backbone, adapter, space, "read from checkpoint shapes")
    return _name_after_preset(cfg, hint)


def _count(sd: dict, prefix: str) -> int:
    idx = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


def _infer_backbone(sd: dict[str, Tensor]):
    d, patch_in = sd["s_embedder.proj.weight"].shape
    patch = math.isqrt(patch_in // 3)
    swiglu = sd["patch_blocks.0.mlp_x.w1.weight"].shape[0]
    pixel_attn = sd["pixel_blocks.0.compress_to_attn.weight"].shape[0]
    return replace(
        PIXELDIT,
        patch_size=patch,
        hidden_size=d,
        num_heads=d // sd["patch_blocks.0.attn.q_norm_x.weight"].shape[0],
        patch_depth=_count(sd, "patch_blocks."),
        pixel_depth=_count(sd, "pixel_blocks."),
        pixel_hidden_size=sd["pixel_embedder.proj.weight"].shape[0],
        pixel_attn_hidden_size=pixel_attn,
        pixel_num_heads=pixel_attn // sd["pixel_blocks.0.attn.q_norm.weight"].shape[0],
        pixel_mlp_ratio=sd["pixel_blocks.0.mlp.fc1.weight"].shape[0] / sd["pixel_embedder.proj.weight"].shape[0],
        mlp_ratio=_mlp_ratio(d, swiglu),
        txt_embed_dim=sd["y_embedder.proj.weight"].shape[1],
        txt_max_length=sd["y_pos_embedding"].shape[1],
    )


def _mlp_ratio(hidden: int, swiglu: int) -> float:
    """The mlp_ratio r with int(2 * int(hidden * r) / 3) == swiglu (the official FeedForward's 2/3 rule)."""
    width = math.ceil(3 * swiglu / 2)
    ratio = width / hidden
    return ratio if int(hidden * ratio) == width else (width + 1e-9) / hidden


def _infer_adapter(sd: dict[str, Tensor], backbone):
    if "lq_proj.latent_proj.0.weight" not in sd:
        return None, None, None
    hidden, conv_in = sd["lq_proj.latent_proj.0.weight"].shape[:2]
    version = "v1.5" if "lq_proj.pit_head.weight" in sd else "v1"
    base = ADAPTER_V1PT5 if version == "v1.5" else ADAPTER_V1
    channels, factor, sr, unpatchify, space = _LATENTS_BY_CHANNELS.get((version, conv_in), (conv_in, 8, 4, 1, None))
    gates = _count(sd, "lq_proj.output_heads.")
    interval = next(i for i in range(1, backbone.patch_depth + 1) if math.ceil(backbone.patch_depth / i) == gates)
    width = sd["lq_proj.gate_modules.0.content_proj.weight"].shape[0]
    adapter = replace(
        base,
        latent_channels=channels,
        hidden_dim=hidden,
        num_res_blocks=max(_count(sd, "lq_proj.latent_proj.") - 3, 0),
        interval=interval,
        gate="per_token_per_dim" if width == backbone.hidden_size else "per_token",
        sr_scale=sr,
        latent_factor=factor,
        unpatchify_factor=unpatchify,
    )
    return adapter, version, space


def _space_from_hint(hint: str) -> str | None:
    h = hint.lower()
    for needle, space in (("flux2", "flux2"), ("qwen", "qwenimage"), ("sdxl", "sdxl"), ("sd3", "sd3"),
                          ("siglip", "siglip"), ("dinov2", "dinov2"), ("flux", "flux1"), ("zimage", "flux1")):
        if needle in h:
            return space
    return None


def _same_network(a: PiDConfig, b: PiDConfig) -> bool:
    return a.backbone == b.backbone and a.adapter == b.adapter


def _name_after_preset(cfg: PiDConfig, hint: str) -> PiDConfig:
    """Name the config after the official preset it equals; the file name picks between equal networks."""
    matches = [PRESETS[n] for n in OFFICIAL_PRESETS if _same_network(PRESETS[n], cfg)]
    if not matches:
        return cfg
    is_4k = "2kto4k" in hint.lower()
    matches = [m for m in matches if ("2kto4k" in m.name) == is_4k] or matches
    matches = [m for m in matches if m.latent_space == cfg.latent_space] or matches
    return replace(matches[0], latent_space=cfg.latent_space or matches[0].latent_space)


# --- strict loading -------------------------------------------------------------------------------------------
def key_report(expected: dict[str, torch.Size], sd: dict[str, Tensor]) -> tuple[list, list, list]:
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted((k, tuple(sd[k].shape), tuple(v)) for k, v in expected.items() if k in sd and sd[k].shape != v)
    return missing, unexpected, wrong


def _expected_shapes(cfg: PiDConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in build_model(cfg).state_dict().items()}


def best_preset(sd: dict[str, Tensor]) -> tuple[str, int]:
    """The official preset whose keys and shapes agree with most tensors of `sd`."""
    def score(name: str) -> int:
        return sum(1 for k, s in _expected_shapes(PRESETS[name]).items() if k in sd and sd[k].shape == s)

    scores = {n: score(n) for n in OFFICIAL_PRESETS}
    name = max(scores, key=scores.get)
    return name, scores[name]


def load_state_dict_strict(cfg: PiDConfig, sd: dict[str, Tensor]) -> nn.Module:
    """Build on the meta device, then assign the tensors: nothing is held in memory twice."""
    with torch.device("meta"):
        model = build_model(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing, unexpected, wrong = key_report(expected, sd)
    if missing or unexpected or wrong:
        name, score = best_preset(sd)
        raise CheckpointError(
            f"The weights do not fit the model configuration {cfg.name!r}.",
            received=_describe_mismatch(missing, unexpected, wrong),
            expected=f"{len(expected)} tensors of {cfg.name}; best matching preset: {name} "
            f"({score} of {len(sd)} tensors agree)",
            fix="load it with the preset that matches (preset=...), or check that the file is a released PiD model",
        )
    model.load_state_dict({k: _aligned(v) for k, v in sd.items()}, strict=True, assign=True)
    return model


def _aligned(t: Tensor, alignment: int = 64) -> Tensor:
    """`t`, or a copy where its data does not start on `alignment` bytes (tensors sliced from a safetensors file's
    buffer): CPU kernels split their sums by the data's alignment, so misaligned weights decode a few ulp off the
    same weights in fresh memory, and the PyTorch fallback of an exported folder would not equal its reference."""
    return t if t.data_ptr() % alignment == 0 else t.clone()


def _describe_mismatch(missing: list, unexpected: list, wrong: list) -> str:
    def head(items: list) -> str:
        return ", ".join(map(str, items[:5])) + (f" ... (+{len(items) - 5})" if len(items) > 5 else "")

    parts = []
    if missing:
        parts.append(f"missing {len(missing)}: {head(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)}: {head(unexpected)}")
    if wrong:
        parts.append(f"wrong shape {len(wrong)} (key, file, model): {head(wrong)}")
    return "; ".join(parts)


def load_checkpoint(path: str | Path, *, preset: str | None = None, trust_pickle: bool = False,
                    verify: bool = True) -> LoadedModel:
    """Any supported file or artefact folder -> a strictly loaded model and its configuration. An artefact's
    weights are checked against its manifest's sha256 (`verify=False`: the explicit opt-out)."""
    path = Path(path)
    if path.is_dir():
        return load_artefact(path, verify=verify)
    sd, source, dropped = canonical_state_dict(read_file(path, trust_pickle=trust_pickle))
    hint = f"{path.parent.name}/{path.name}"  # official files sit in a folder named after the experiment
    cfg = get_preset(preset) if preset else infer_config(sd, hint=hint, source=source)
    return LoadedModel(load_state_dict_strict(cfg, sd), cfg, source, str(path), dropped)


# --- the SDK artefact -----------------------------------------------------------------------------------------
def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def usual_permissions(path: str | Path, mode: int = 0o666) -> None:
    """Files the SDK writes through a temporary file (mkstemp) or safetensors (which also writes 0600) get the
    permissions of any new file: an artefact built by one user (CI) must be readable by the service that runs it."""
    os.chmod(path, mode & ~current_umask())


def save_safetensors(tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    usual_permissions(path)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_artefact(model: nn.Module, cfg: PiDConfig, out_dir: str | Path, *, dtype: torch.dtype = torch.bfloat16,
                  source: str = "", latent_space: str | None = None, replace_artefact: bool = False) -> Path:
    """Write `model.safetensors` + `manifest.json` atomically (a temporary folder renamed into place).
    `replace_artefact`: an artefact already in `out_dir` is swapped for the new one, never left half-written."""
    from pid_sdk import __version__

    out_dir = Path(out_dir)
    replacing = replace_artefact and (out_dir / MANIFEST_FILE).is_file()
    if out_dir.exists() and any(out_dir.iterdir()) and not replacing:
        raise CheckpointError(f"{out_dir} exists and is not empty.", fix="choose a new folder or remove it")
    cfg = replace(cfg, latent_space=latent_space or cfg.latent_space)
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pid-convert-", dir=out_dir.parent))
    usual_permissions(tmp, 0o777)  # mkdtemp makes a 0700 folder
    try:
        save_safetensors(tensors, tmp / MODEL_FILE, metadata={"format": ARTEFACT_FORMAT, "preset": cfg.name})
        manifest = {
            "format": ARTEFACT_FORMAT,
            "format_version": ARTEFACT_VERSION,
            "preset": cfg.name,
            "config": cfg.to_dict(),
            "latent_space": cfg.latent_space,
            "source": source,
            "dtype": str(dtype).removeprefix("torch."),
            "parameters": sum(t.numel() for t in tensors.values()),
            "sha256": {MODEL_FILE: sha256_file(tmp / MODEL_FILE)},
            "pid_sdk_version": __version__,
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        if replacing:  # the old artefact steps aside only for the rename
            old = out_dir.rename(out_dir.with_name(tmp.name + "-old"))
            try:
                os.replace(tmp, out_dir)
            except BaseException:
                old.rename(out_dir)
                raise
            shutil.rmtree(old, ignore_errors=True)
            return out_dir
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.exists():
        raise CheckpointError(f"{folder} is not a pid-sdk model folder: it has no {MANIFEST_FILE}.",
                              fix="point to a folder written by `pid-sdk convert`, or to a checkpoint file")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON.", received=str(exc)[:200],
                              fix="convert the model again") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path} is not a pid-sdk manifest.", received=f"a JSON {type(manifest).__name__}",
                              expected=f"a JSON object of format {ARTEFACT_FORMAT}", fix="convert the model again")
    if manifest.get("format") != ARTEFACT_FORMAT or manifest.get("format_version") != ARTEFACT_VERSION:
        raise CheckpointError(f"{path} is not a supported pid-sdk manifest.",
                              received=f"format={manifest.get('format')} version={manifest.get('format_version')}",
                              expected=f"format={ARTEFACT_FORMAT} version={ARTEFACT_VERSION}",
                              fix="convert the model again with this pid-sdk version")
    return manifest


def load_artefact(folder: str | Path, *, verify: bool = True) -> LoadedModel:
    folder = Path(folder)
    manifest = read_manifest(folder)
    weights = folder / MODEL_FILE
    if not weights.exists():
        raise CheckpointError(f"{folder} has a manifest but no {MODEL_FILE}.", fix="convert the model again")
    hashes = manifest.get("sha256")
    want = hashes.get(MODEL_FILE) if isinstance(hashes, dict) else None
    if verify and not (isinstance(want, str) and len(want) == 64):
        raise CheckpointError(f"The manifest of {folder} has no sha256 for {MODEL_FILE}.", received=repr(hashes)[:120],
                              expected=f'"sha256": {{"{MODEL_FILE}": 64 hex digits}}',
                              fix="convert the model again (pid-sdk convert), or pass verify=False (CLI: --no-verify) "
                                  "to load unverified weights")
    if verify and (digest := sha256_file(weights)) != want:
        raise CheckpointError(f"{weights} does not match the sha256 in its manifest (modified or truncated).",
                              received=digest, expected=want, fix="convert the model again")
    if not isinstance(manifest.get("config"), dict):
        raise CheckpointError(f"The manifest of {folder} has no model configuration.",
                              received=repr(manifest.get("config"))[:80], expected='"config": {...}',
                              fix="convert the model again")
    cfg = PiDConfig.from_dict(manifest["config"])
    sd = read_safetensors(weights)
    return LoadedModel(load_state_dict_strict(cfg, sd), cfg, "artefact", str(folder), [], manifest)
