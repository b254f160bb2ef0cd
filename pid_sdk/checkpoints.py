"""Reading weights: official PiD / PixelDiT `.pth`, safetensors repacks, and the SDK's own artefact.

Every form is mapped to the official key names, the configuration is read off the keys and shapes, the model is
built on the meta device and the tensors are assigned (never copied), and the load is strict.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import pickletools
import re
import shutil
import struct
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from torch import Tensor, nn

from pid_sdk.config import (ADAPTER_V1, ADAPTER_V1PT5, OFFICIAL_PRESETS, PIXELDIT, PRESETS, SIZES_2K, SIZES_4K,
                            PiDConfig, get_preset)
from pid_sdk.errors import CheckpointError, UnsafeCheckpointError
from pid_sdk.files import (MAX_JSON_BYTES, check_digest, digest, inside, is_folder, open_in_folder, open_regular,
                           read_json, sha256_of)
from pid_sdk.inputs import check_flag
from pid_sdk.model import build_model

MODEL_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
ARTEFACT_FORMAT = "pid-sdk-model"
ARTEFACT_VERSION = 1

# What torch.load raises on damaged bytes (the zip reader's, the unpickler's and the storage reader's own errors,
# found by fuzzing: tests/test_fuzz.py); anything else is a bug of ours and surfaces as one.
DAMAGED_PICKLE = (pickle.UnpicklingError, RuntimeError, EOFError, UnicodeDecodeError, ValueError, IndexError, KeyError,
                  struct.error, AssertionError, OSError)
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
    with open_regular(path, what=what):  # a folder, FIFO or device is refused before a byte is read
        pass
    if path.stat().st_size == 0:
        raise CheckpointError(f"The {what} {path} is empty (0 bytes).", expected=f"a {what} file",
                              fix="download or convert it again")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return _read_pickle(path, trust_pickle)


def read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    from safetensors import SafetensorError

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"Cannot read {path} as safetensors: it is truncated or corrupt.",
                              received=f"{path.stat().st_size} bytes ({exc})", expected="a complete safetensors file",
                              fix="download or convert it again") from None


def _read_pickle(path: Path, trust_pickle: bool) -> dict:
    trust_pickle = check_flag("trust_pickle", trust_pickle)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy non-zip format
    except pickle.UnpicklingError as exc:
        if not wellformed_pickle(path):  # the weights-only unpickler met bytes, not a class it refuses
            raise _corrupt(path, exc) from None
        if not trust_pickle:
            refused = next((line.strip() for line in str(exc).splitlines() if "Unsupported" in line),
                           str(exc).splitlines()[0] if str(exc) else "")
            raise UnsafeCheckpointError(
                f"{path} holds Python objects that can only be loaded by running code from the file.",
                received=refused[:300], expected="plain tensors (loadable with torch.load(weights_only=True))",
                fix="only if you trust the file's origin: pass trust_pickle=True (CLI: --trust-pickle); "
                "better, convert it once with `pid-sdk convert --trust-pickle` and use the safetensors artefact",
            ) from None
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as full:  # noqa: BLE001 (the file's own code ran, with consent: any error is the file's)
            raise CheckpointError(f"{path} needs its own code to load, and running it failed.",
                                  received=f"{type(full).__name__}: {str(full)[:200]}",
                                  fix="load it where the modules it names are installed, and convert it there once "
                                      "(pid-sdk convert --trust-pickle)") from None
    except DAMAGED_PICKLE as exc:
        raise _corrupt(path, exc) from None


def wellformed_pickle(path: Path, limit: int = 64 << 20) -> bool:
    """Whether the file's (first) pickle is a complete, valid opcode stream: a pickle the weights-only unpickler
    refuses for its classes needs code; one whose opcodes do not even parse is damaged."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                if archive.getinfo(name).file_size > limit:
                    return False
                data = archive.read(name)
        else:
            with open_regular(path, what="checkpoint") as f:
                data = f.read(limit)
        for _ in pickletools.genops(io.BytesIO(data)):
            pass
        return True
    except (ValueError, StopIteration, zipfile.BadZipFile, OSError, KeyError, EOFError):
        return False


def _corrupt(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(f"Cannot read {path}: it is corrupt, truncated or not a file written by torch.save.",
                           received=f"{path.stat().st_size} bytes ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0][:160] if str(exc) else ''})",
                           expected="a file written by torch.save", fix="download or convert it again")


# --- key normalisation ----------------------------------------------------------------------------------------
def canonical_state_dict(raw: dict) -> tuple[dict[str, Tensor], str, list[str]]:
    """Official key names from any supported layout. Returns (state dict, detected source, dropped keys)."""
    source = "safetensors"
    if not isinstance(raw, dict):
        raise CheckpointError(f"The file holds a {type(raw).__name__}, not a state dict of named tensors.",
                              received=type(raw).__name__, expected="a dict of tensor names to tensors",
                              fix="pass a PiD checkpoint (model_ema_bf16.pth), a safetensors repack or an SDK artefact")
    if isinstance(raw.get("state_dict"), dict):
        raw, source = raw["state_dict"], "original-pixeldit"
    tensors = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if any(k.startswith("net.") for k in tensors):
        source = "official-pid"
    out, dropped, split = {}, [], {}
    for key, value in tensors.items():
        name = _strip_prefix(key)
        if name.startswith(_SKIP_PREFIXES) or name == "pos_embed":
            dropped.append(key)
        elif m := _SPLIT_ADALN.match(name):
            split.setdefault((m[1], m[3]), {})[m[2]] = value
        else:
            out[name] = value
    # A missing or damaged pixel_embedder is refused right after (check_read_shapes); until then, the official width.
    embedder = out.get("pixel_embedder.proj.weight")
    pixel_hidden = (embedder.shape[0] if embedder is not None and embedder.dim() else 0) or PIXELDIT.pixel_hidden_size
    for (block, kind), halves in split.items():
        try:
            out[f"{block}.adaLN_modulation.0.{kind}"] = _merge_adaln(halves, block, pixel_hidden)
        except RuntimeError:  # halves whose sizes are not 3 chunks of the pixel width
            raise CheckpointError(f"{block}.adaLN_modulation_msa / _mlp have shapes no PiT block has.",
                                  received={h: tuple(t.shape) for h, t in halves.items()},
                                  expected=f"[pixels x 3 x {pixel_hidden}, ...] each",
                                  fix="use a complete, unmodified checkpoint") from None
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
    check_read_shapes(sd)
    backbone = _infer_backbone(sd)
    adapter, version, space = _infer_adapter(sd, backbone)
    if adapter is None:
        ntk = source == "official-pid" or "2kto4k" in hint.lower()
        backbone = replace(backbone, rope_mode="ntk" if ntk else "plain", rope_ref=2048 if ntk else 1024)
    else:
        ref = 2048 if version == "v1.5" else 1024
        backbone = replace(backbone, rope_mode="ntk", rope_ref=ref)
        space = _space_from_hint(hint) or space
    sizes = SIZES_4K if version == "v1.5" or "2kto4k" in hint.lower() else SIZES_2K
    cfg = PiDConfig("custom", backbone, adapter, space, "read from checkpoint shapes", sizes)
    return _name_after_preset(cfg, hint)


# The tensors the configuration is read from, with their ranks: each is checked (present, that rank, no empty
# dimension) before a shape of it is used, so a damaged repack is a CheckpointError naming the key.
READ_SHAPES = {"s_embedder.proj.weight": 2, "patch_blocks.0.mlp_x.w1.weight": 2,
               "patch_blocks.0.attn.q_norm_x.weight": 1, "pixel_embedder.proj.weight": 2,
               "pixel_blocks.0.compress_to_attn.weight": 2, "pixel_blocks.0.attn.q_norm.weight": 1,
               "pixel_blocks.0.mlp.fc1.weight": 2, "y_embedder.proj.weight": 2, "y_pos_embedding": 3}
ADAPTER_READ_SHAPES = {"lq_proj.latent_proj.0.weight": 4, "lq_proj.gate_modules.0.content_proj.weight": 2}


def check_read_shapes(sd: dict[str, Tensor]) -> None:
    wanted = {**READ_SHAPES, **(ADAPTER_READ_SHAPES if "lq_proj.latent_proj.0.weight" in sd else {})}
    missing = [k for k in wanted if k not in sd]
    if missing:
        raise CheckpointError("The checkpoint is missing tensors every PiD variant has.", received=f"no {missing[:4]}",
                              fix="the file is incomplete or of another model; use the official file")
    bad = {k: tuple(sd[k].shape) for k, rank in wanted.items() if sd[k].dim() != rank or 0 in sd[k].shape}
    if bad:
        key, shape = next(iter(bad.items()))
        raise CheckpointError(f"The checkpoint's {key} has a shape no PiD model has.", received=f"shape {list(shape)}",
                              expected=f"{wanted[key]} non-empty dimensions",
                              fix="use a complete, unmodified checkpoint (a repack may have cut or flattened it)")


def _count(sd: dict, prefix: str) -> int:
    """Blocks of a family: one more than the highest numeric index (a stray key like patch_blocks.foo is left to
    the strict load, which names it)."""
    idx = {int(part) for k in sd if k.startswith(prefix) and (part := k[len(prefix):].split(".")[0]).isdigit()}
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
    interval = next((i for i in range(1, backbone.patch_depth + 1) if math.ceil(backbone.patch_depth / i) == gates),
                    None)
    if interval is None:
        raise CheckpointError("The checkpoint's gates do not fit its blocks.",
                              received=f"{gates} lq_proj.output_heads for {backbone.patch_depth} patch blocks",
                              expected="ceil(patch blocks / interval) gates for some interval",
                              fix="use a complete, unmodified checkpoint")
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
    not_float = sorted(k for k, v in sd.items() if k in expected and not v.is_floating_point())
    if not_float:
        raise CheckpointError(f"The weights hold tensors that are not floating point: {not_float[0]}.",
                              received=f"{len(not_float)} tensors, e.g. {not_float[0]}: {sd[not_float[0]].dtype}",
                              expected="float32, bfloat16 or float16 weights",
                              fix="use a complete, unmodified checkpoint")
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
    if is_folder(path, what="model"):
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


def sha256_file(path: str | Path) -> str:
    """The sha256 of a regular file (pid_sdk.files: a FIFO or device is refused, never read)."""
    with open_regular(path, what="file") as f:
        return sha256_of(f)


def save_artefact(model: nn.Module, cfg: PiDConfig, out_dir: str | Path, *, dtype: torch.dtype = torch.bfloat16,
                  source: str = "", latent_space: str | None = None, replace_artefact: bool = False,
                  license: str | None = None) -> Path:
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
        if license is not None:  # the weights' licence (pid_sdk/registry.py), shown by info, verify and serve
            manifest["license"] = license
        manifest["manifest_sha256"] = digest(manifest)
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


class ArtefactSchema(BaseModel):
    """The artefact's manifest.json, typed before use (pydantic, strict: see runtime/manifest.py)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    format: Literal["pid-sdk-model"]
    format_version: Literal[1]
    preset: Annotated[str, StringConstraints(max_length=128)]
    config: dict
    latent_space: Annotated[str, StringConstraints(max_length=64)] | None
    source: Annotated[str, StringConstraints(max_length=16384)]
    dtype: Literal["bfloat16", "float32", "float16"]
    parameters: Annotated[int, Field(ge=0, le=10**12)]
    sha256: dict[Literal["model.safetensors"], Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]]
    pid_sdk_version: Annotated[str, StringConstraints(max_length=32)]
    license: Annotated[str, StringConstraints(max_length=512)] | None = None
    manifest_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None


def read_artefact_manifest(folder: str | Path, *, verify: bool = True) -> dict:
    """An artefact's manifest: a regular file inside the folder, read within bounds, typed against its schema and
    checked against its digest (`verify=False`: the explicit opt-out)."""
    from pydantic import ValidationError

    folder = Path(folder)
    path = folder / MANIFEST_FILE
    fix = "convert the model again (pid-sdk convert)"
    if not os.path.lexists(path):
        raise CheckpointError(f"{folder} is not a pid-sdk model folder: it has no {MANIFEST_FILE}.",
                              fix="point to a folder written by `pid-sdk convert`, or to a checkpoint file")
    with open_in_folder(folder, MANIFEST_FILE, what="model manifest", max_bytes=MAX_JSON_BYTES) as f:
        manifest = read_json(f, what=f"model manifest {path}", fix=fix)
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path} is not a pid-sdk manifest.", received=f"a JSON {type(manifest).__name__}",
                              expected=f"a JSON object of format {ARTEFACT_FORMAT}", fix=fix)
    if manifest.get("format") != ARTEFACT_FORMAT or manifest.get("format_version") != ARTEFACT_VERSION:
        raise CheckpointError(f"{path} is not a supported pid-sdk manifest.",
                              received=f"format={manifest.get('format')} version={manifest.get('format_version')}",
                              expected=f"format={ARTEFACT_FORMAT} version={ARTEFACT_VERSION}",
                              fix="convert the model again with this pid-sdk version")
    try:
        ArtefactSchema.model_validate(manifest)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        raise CheckpointError(f"{path} is damaged: {'.'.join(map(str, error['loc']))}: {error['msg']}."[:300],
                              received=f"{exc.error_count()} problems", expected="a manifest written by pid-sdk "
                              "convert", fix=fix) from None
    check_digest(manifest, path, verify, fix)
    return manifest


def load_artefact(folder: str | Path, *, verify: bool = True) -> LoadedModel:
    folder = Path(folder)
    manifest = read_artefact_manifest(folder, verify=verify)
    if not os.path.lexists(folder / MODEL_FILE):
        raise CheckpointError(f"{folder} has a manifest but no {MODEL_FILE}.", fix="convert the model again")
    weights = inside(folder, MODEL_FILE, what="weights file")  # a link out of the folder is refused
    want = manifest["sha256"].get(MODEL_FILE)
    if verify and want is None:
        raise CheckpointError(f"The manifest of {folder} has no sha256 for {MODEL_FILE}.",
                              received=repr(manifest["sha256"])[:120],
                              expected=f'"sha256": {{"{MODEL_FILE}": 64 hex digits}}',
                              fix="convert the model again (pid-sdk convert), or pass verify=False (CLI: --no-verify) "
                                  "to load unverified weights")
    if verify and (got := sha256_file(weights)) != want:
        raise CheckpointError(f"{weights} does not match the sha256 in its manifest (modified or truncated).",
                              received=got, expected=want, fix="convert the model again")
    cfg = PiDConfig.from_dict(manifest["config"])
    sd = read_safetensors(weights)
    return LoadedModel(load_state_dict_strict(cfg, sd), cfg, "artefact", str(folder), [], manifest)
