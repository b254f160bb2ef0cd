"""Reading a latent (or text-embedding) file: .safetensors, .npy, or .pt / .pth loaded with `weights_only=True`.

Each format's metadata (tensor names, dtypes, shapes, the byte count it claims) is checked against the file and a
bound before any data is read: a 1 KB file must not make the reader allocate gigabytes.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from tokenize import TokenError

import numpy as np
import torch
from safetensors import SafetensorError

from pid_sdk.errors import InputError
from pid_sdk.files import open_regular

MAX_ELEMENTS = 1 << 28  # 1 GiB of float32: far above any latent batch a decode can take (see inputs.MAX_PIXELS)
MAX_FILE_BYTES = 8 * MAX_ELEMENTS + (100 << 20)  # float64 values and a header
SUFFIXES = (".safetensors", ".npy", ".pt", ".pth")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
SAVE_HINT = "save it with safetensors.torch.save_file({'latent': z}, path)"
# What the format readers raise on damaged bytes (their parsers' own errors, found by fuzzing: tests/test_fuzz.py);
# anything else is a bug of ours and surfaces as one.
DAMAGED = (SafetensorError, ValueError, OSError, EOFError, TokenError, SyntaxError)


def read_latent_file(path: str | Path, *, trust_pickle: bool = False, what: str = "latent") -> torch.Tensor:
    """The one tensor of the file (the one named `latent` where there are several)."""
    p = Path(path)
    with open_regular(p, what=f"{what} file", max_bytes=MAX_FILE_BYTES, error=InputError):
        pass  # a folder, FIFO or device is refused here, before any reader opens it
    if p.suffix.lower() not in SUFFIXES:
        image = p.suffix.lower() in IMAGE_SUFFIXES
        raise InputError(f"Unsupported {what} file type.", received=p.suffix or "(no suffix)",
                         expected=", ".join(SUFFIXES),
                         fix="PiD decodes latents, not images: encode the image with its latent space's VAE first "
                             "(a tiny one: pid_sdk.tae.TinyAutoencoder)" if image else SAVE_HINT)
    reader = {".safetensors": _safetensors, ".npy": _npy}.get(p.suffix.lower(), _pickle)
    try:
        value = reader(p, what) if reader is not _pickle else _pickle(p, what, trust_pickle)
    except DAMAGED as exc:
        raise InputError(f"Cannot read the {what} file {p}: it is truncated or corrupt.",
                         received=f"{type(exc).__name__}: {exc}"[:300],
                         expected="a complete .safetensors / .pt / .npy file holding one tensor",
                         fix=SAVE_HINT) from None
    return _single_tensor(value, p, what)


def _check_meta(p: Path, what: str, name: str, dtype: str, shape: tuple[int, ...], floating: bool) -> None:
    numel = math.prod(shape)
    if not floating:
        raise InputError(f"The {what} {name!r} in {p.name} is not floating point.", received=dtype,
                         expected="float16, bfloat16, float32 or float64", fix=SAVE_HINT + " with z.float()")
    if numel > MAX_ELEMENTS or len(shape) > 8:
        raise InputError(f"The {what} {name!r} in {p.name} claims {numel:,} values.", received=f"shape {list(shape)}",
                         expected=f"at most {MAX_ELEMENTS:,} values (a latent batch, not an image)",
                         fix="pass the latent the LDM produced; split very large batches over several files")


def _safetensors(p: Path, what: str) -> dict:
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:  # reads and checks the header only
        names = list(f.keys())
        wanted = ["latent"] if "latent" in names else names
        if len(wanted) != 1:
            raise _several(p, names, what)
        meta = f.get_slice(wanted[0])
        dtype = meta.get_dtype()
        _check_meta(p, what, wanted[0], dtype, tuple(meta.get_shape()), dtype in ("F16", "BF16", "F32", "F64"))
        return {wanted[0]: f.get_tensor(wanted[0])}


def _npy(p: Path, what: str) -> torch.Tensor:
    with p.open("rb") as f:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(f, max_header_size=10_000)
        offset = f.tell()
    _check_meta(p, what, "array", str(dtype), tuple(shape), dtype.kind == "f" and not dtype.fields)
    claimed, present = math.prod(shape) * dtype.itemsize, p.stat().st_size - offset
    if claimed != present:
        raise InputError(f"The {what} file {p.name} is truncated or its header lies.",
                         received=f"a header claiming {claimed:,} bytes of data, {present:,} present",
                         expected="a complete .npy file", fix=SAVE_HINT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only memory map: copied below, never written
        array = np.load(p, mmap_mode="r", allow_pickle=False)
        return torch.from_numpy(np.array(array))


def _pickle(p: Path, what: str, trust_pickle: bool):
    from pid_sdk.checkpoints import read_file

    return read_file(p, trust_pickle=trust_pickle, what=f"{what} file")  # weights_only, memory-mapped


def _several(p: Path, names: list, what: str) -> InputError:
    return InputError(f"{p} holds {len(names)} tensors and none is named 'latent'.", received=sorted(names)[:10],
                      expected=f"one tensor, or one named 'latent' ({what})",
                      fix="save only the latent, or name it: safetensors.torch.save_file({'latent': z, ...}, path)")


def _single_tensor(value, path: Path, what: str) -> torch.Tensor:
    if isinstance(value, dict):
        tensors = {k: v for k, v in value.items() if isinstance(v, torch.Tensor)}
        key = "latent" if "latent" in tensors else (next(iter(tensors)) if len(tensors) == 1 else None)
        if key is None:
            raise _several(path, list(tensors), what)
        value = tensors[key]
    if not isinstance(value, torch.Tensor):
        raise InputError(f"{path} does not hold a tensor.", received=type(value).__name__, expected="a tensor",
                         fix=SAVE_HINT)
    if value.is_nested or value.layout != torch.strided:
        raise InputError(f"{path} holds a sparse or nested tensor.", received=str(value.layout),
                         expected="a dense tensor",
                         fix="save the dense tensor: torch.save({'latent': z.to_dense()}, path)")
    _check_meta(path, what, "tensor", str(value.dtype), tuple(value.shape),
                value.is_floating_point() and not value.is_complex())
    return value
