"""What a caller may pass to `Decoder.decode`: every argument checked, from metadata before any data is touched.

A decoder sits behind services that take latents from other people's programs, so a latent is judged by its type,
dtype, device, rank and shape before a single value is read or copied (a broadcast view of a 100000x100000 latent
costs nothing to send and 640 GB to materialise), then by its values (finite, and not absurdly large). The largest
allocation a request can cause is a function of the output pixels it asks for, bounded by `max_pixels`.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import torch
from torch import Tensor

from pid_sdk.errors import InputError
from pid_sdk.latents import LatentSpace, get_latent_space

MAX_OUTPUT_SIDE = 8192  # twice the largest official resolution; raise Decoder.max_output_side on purpose
MAX_PIXELS = 4 * 4096 * 4096  # output pixels of one decode call, all images of the batch together
MAX_LATENT_ABS = 1e4  # raw VAE latents and encoder features stay within a few hundred
MAX_STEPS = 1000
MAX_COMPARE_STEPS = 50  # parity runs reference and candidate once per step: the teacher's count at most
MAX_SEED = 2**63 - 1
MAX_GUIDANCE = 100.0


MAX_ARRAY_ELEMENTS = 1 << 28  # what a numpy array may hold before it is copied (byte order, strides): 1 GiB of fp32


def as_float_tensor(value, name: str) -> Tensor:
    """The caller's tensor or array as a float CPU-or-GPU tensor, refused on its metadata alone when it cannot be
    one; a numpy array in another byte order or with negative strides is copied to native order first (bounded).
    Call `check_latent_shape` (or another shape check) on the result's shape before touching its values."""
    if isinstance(value, np.ndarray):
        value = _native_array(value, name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only arrays: never written, copied before use
            value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise InputError(f"{name} must be a tensor.", received=type(value).__name__,
                         expected="torch.Tensor or numpy.ndarray", fix=f"torch.as_tensor({name}, dtype=torch.float32)")
    if value.is_nested or value.layout != torch.strided:
        kind = "nested" if value.is_nested else f"{str(value.layout).removeprefix('torch.')} (sparse)"
        raise InputError(f"{name} is a {kind} tensor.", received=f"layout {kind}", expected="a dense tensor",
                         fix=f"pass {name}.to_dense()" if not value.is_nested else "pass one dense tensor per latent")
    if value.is_complex():
        raise InputError(f"{name} has a complex dtype.", received=str(value.dtype),
                         expected="float16, bfloat16, float32 or float64", fix=f"pass the real part: {name}.real")
    if not value.is_floating_point():
        raise InputError(f"{name} has an integer or boolean dtype.", received=str(value.dtype),
                         expected="float16, bfloat16, float32 or float64",
                         fix=f"pass the {name} as the model produced it (floating point), e.g. x.float()")
    if value.device.type == "meta":
        raise InputError(f"{name} is on the meta device: it has a shape but no values.", received=str(value.device),
                         expected="a tensor with data (cpu or cuda)", fix="pass the real tensor the LDM produced")
    return value.detach()


def _native_array(value: np.ndarray, name: str) -> np.ndarray:
    """A float array torch can take without a copy, or a bounded copy in native byte order and positive strides."""
    kind = value.dtype.kind
    if kind != "f" or value.dtype.fields:
        what = {"c": "a complex", "O": "a Python-object", "V": "a structured", "U": "a string", "S": "a bytes"}.get(
            kind, "an integer or boolean")
        raise InputError(f"{name} has {what} dtype.", received=str(value.dtype),
                         expected="float16, float32 or float64",
                         fix=f"pass the {name} as the model produced it (real floating point), e.g. x.astype("
                             "'float32')" if kind != "c" else f"pass the real part: {name}.real")
    if value.dtype.itemsize > 8:
        raise InputError(f"{name} has a {value.dtype} dtype (long double), which torch has no type for.",
                         received=str(value.dtype), expected="float16, float32 or float64",
                         fix=f"pass {name}.astype('float32')")
    swapped = not value.dtype.isnative
    if not swapped and all(stride >= 0 for stride in value.strides):
        return value
    if value.size > MAX_ARRAY_ELEMENTS:  # judged before the copy: a broadcast view may claim any size
        raise InputError(f"{name} is too large to convert.", received=f"shape {value.shape}",
                         expected=f"at most {MAX_ARRAY_ELEMENTS:,} values", fix="pass the latent the LDM produced")
    return np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("=") if swapped else value.dtype)


def check_latent_shape(shape: tuple[int, ...], space: LatentSpace, sr_scale: int, max_side: int,
                       max_pixels: int) -> tuple[int, int]:
    """Rank, emptiness, channels and the output size of a latent's shape; returns the output (height, width)."""
    if len(shape) not in (3, 4):
        raise InputError("The latent has the wrong rank.", received=f"shape {tuple(shape)}",
                         expected="[B, C, h, w] or [C, h, w]", fix="pass one latent or a batch of latents")
    batch, channels, h, w = (1, *shape) if len(shape) == 3 else shape
    if min(batch, channels, h, w) < 1:
        raise InputError("The latent is empty.", received=f"shape {tuple(shape)}",
                         expected="batch, channels, height and width >= 1",
                         fix="check the LDM's output: a latent of a 2048x2048 FLUX.1 image is [1, 16, 128, 128]")
    accepted = [space.channels] + ([space.vae_form[0]] if space.vae_form else [])
    if channels not in accepted:
        raise InputError(f"The latent has the wrong number of channels for latent space {space.name!r}.",
                         received=f"{channels} channels (shape {tuple(shape)})",
                         expected=f"{' or '.join(map(str, accepted))} channels ({space.description})",
                         fix="pass the latent_space of the LDM that produced it")
    if space.vae_form and channels == space.vae_form[0]:
        f = space.factor // space.vae_form[1]
        if h % f or w % f:
            raise InputError(f"A {channels}-channel {space.name} latent must have even height and width to be "
                             f"patchified {f}x{f}.", received=f"{h}x{w}", expected=f"multiples of {f}",
                             fix="crop or pad the latent by one row / column")
        h, w = h // f, w // f
    out_h, out_w = space.output_size(h, w, sr_scale)
    if max(out_h, out_w) > max_side:
        raise InputError("The latent is too large: the decoded image would exceed the size limit.",
                         received=f"latent {tuple(shape)} -> {out_h}x{out_w} pixels",
                         expected=f"an output side <= {max_side} "
                                  f"(latent side <= {max_side // (space.factor * sr_scale)})",
                         fix="check that you passed a latent, not an image; or raise Decoder.max_output_side")
    if batch * out_h * out_w > max_pixels:
        raise InputError("The request asks for more output pixels than this decoder allows in one call.",
                         received=f"{batch} x {out_h}x{out_w} = {batch * out_h * out_w:,} pixels",
                         expected=f"<= {max_pixels:,} pixels (Decoder.max_pixels)",
                         fix="decode the batch in smaller chunks (CLI: --batch-size), or raise Decoder.max_pixels "
                             "if the machine has the memory")
    return out_h, out_w


def check_latent(latent, space: LatentSpace, *, model_space: str | None, adapter, normalized: bool, stats,
                 max_side: int, max_pixels: int) -> Tensor:
    """The caller's latent as the float32 CPU [B, C, h, w] the adapter takes: judged by its shape before any value
    is read, then by its values; normalised from a raw VAE latent when `normalized` is False."""
    z = as_float_tensor(latent, "latent")
    check_latent_shape(tuple(z.shape), space, adapter.sr_scale, max_side, max_pixels)
    z = z.to("cpu", torch.float32)
    z = z[None] if z.ndim == 3 else z
    check_latent_values(z)
    if not normalized:
        z = space.normalize(z, check_stats(stats, tuple(space.to_model_form(z[:1, :, :, :]).shape[1:])))
    else:
        z = space.to_model_form(z)
    if z.shape[1] != adapter.latent_channels:
        raise InputError(f"This model decodes {adapter.latent_channels}-channel latents, not {space.name!r} latents.",
                         received=f"latent_space={space.name} ({z.shape[1]} channels)",
                         expected=f"{adapter.latent_channels} channels ({model_space})",
                         fix=f"load the PiD model for {space.name}, or pass latents of {model_space}")
    if model_space and get_latent_space(model_space).name != space.name:
        warnings.warn(f"Decoding {space.name} latents with a model trained for {model_space}.", stacklevel=4)
    return z


def check_latent_values(z: Tensor, name: str = "latent") -> None:
    """Finite, and within what any LDM or text encoder produces: a finite 1e30 would decode to an all-NaN image."""
    latent = name == "latent"
    source, fix = (("LDM", "check the LDM output (fp16 overflow is a common cause)") if latent else
                   ("text encoder", "pass Gemma-2-2B-it last hidden states (prompt= computes them for you)"))
    finite = torch.isfinite(z)
    if not finite.all():
        raise InputError(f"The {name} {'contains' if latent else 'contain'} NaN or Inf values.",
                         received=f"{(~finite).sum().item()} non-finite values", expected="finite numbers", fix=fix)
    peak = z.abs().max().item()
    if peak > MAX_LATENT_ABS:
        raise InputError(f"The {name} {'holds' if latent else 'hold'} values no {source} produces.",
                         received=f"max |value| {peak:.3g}",
                         expected=f"|value| <= {MAX_LATENT_ABS:g}" + (" (normalised latents are about N(0, 1))"
                                                                       if latent else ""),
                         fix="pass the latent itself (not an image or a sum of latents); pass normalized=False "
                             "for a raw VAE latent" if latent else fix)


def check_text_embeddings(embeddings, batch: int, max_length: int, width: int) -> Tensor:
    """[B or 1, L <= max_length, width] (or [L, width]) finite float embeddings -> float32 [batch, L, width]."""
    e = as_float_tensor(embeddings, "text_embeddings")
    if e.ndim == 2:
        e = e[None]
    ok = e.ndim == 3 and e.shape[-1] == width and 1 <= e.shape[1] <= max_length
    if not ok or e.shape[0] not in (1, batch):
        raise InputError("The text embeddings have the wrong shape.", received=f"shape {tuple(e.shape)}",
                         expected=f"[{'1' if batch == 1 else f'{batch} or 1'}, L <= {max_length}, {width}]",
                         fix="pass Gemma-2-2B-it last hidden states (prompt= computes them for you)")
    e = e.to("cpu", torch.float32)
    check_latent_values(e, "text embeddings")
    return e.expand(batch, -1, -1)


def check_sigma(latent_sigma, batch: int, space: LatentSpace) -> Tensor:
    upper = float("inf") if space.noise_form == "vp" else 1.0
    numbers_ = "one number" if batch == 1 else f"one number or {batch} numbers"
    expected = f"{numbers_} in [0, {upper}] ({space.name} noise frame)"
    fix = "pass the LDM's noise level at the captured step (0 for a finished latent)"
    if isinstance(latent_sigma, bool) or not isinstance(latent_sigma, (numbers.Real, Tensor, np.ndarray, list, tuple)):
        raise InputError("latent_sigma must be a number.", received=repr(latent_sigma)[:80], expected=expected,
                         fix=fix)
    count = math.prod(latent_sigma.shape) if isinstance(latent_sigma, (Tensor, np.ndarray)) else (
        len(latent_sigma) if isinstance(latent_sigma, (list, tuple)) else 1)
    if count not in (1, batch):  # before any conversion: a broadcast view could claim billions of values
        raise InputError("latent_sigma has the wrong number of values.", received=f"{count:,} values",
                         expected=expected, fix=fix)
    try:
        sigma = torch.as_tensor(latent_sigma, dtype=torch.float32).reshape(-1)
    except (TypeError, ValueError, RuntimeError, OverflowError):  # 10**400 overflows the conversion
        raise InputError("latent_sigma must be a number.", received=repr(latent_sigma)[:80], expected=expected,
                         fix=fix) from None
    if sigma.numel() not in (1, batch) or not torch.isfinite(sigma).all() or (sigma < 0).any() or (sigma > upper).any():
        raise InputError("latent_sigma is out of range.", received=repr(latent_sigma)[:80], expected=expected, fix=fix)
    return sigma.expand(batch).clone()


def check_flag(name: str, value) -> bool:
    """A yes / no argument: only a real boolean counts (a string "no" is truthy, and consent must mean yes)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name} must be True or False.", received=repr(value)[:80], expected="a bool",
                         fix=f"pass {name}=True or {name}=False")
    return bool(value)


def check_callback(name: str, value) -> None:
    if value is not None and not callable(value):
        raise InputError(f"{name} must be a function or None.", received=repr(value)[:80],
                         expected=f"a callable {name}(step, steps)", fix=f"pass {name}=None or a function")


def check_int(name: str, value, low: int, high: int, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        first = example.split(",")[0].replace(" (default)", "")
        fix = f"pass {name} {first}" if name.startswith("--") else f"pass {name}={first}"  # a CLI flag, or an argument
        raise InputError(f"{name} must be an integer in [{low}, {high}].", received=repr(value)[:80],
                         expected=example, fix=fix)
    return int(value)


def check_steps(steps) -> int:
    return check_int("steps", steps, 1, MAX_STEPS, "4 (default), or 1, 2, 3, ...")


def check_seed(seed, batch: int | None = None) -> int | list[int] | None:
    """None (a random seed), one seed for the batch, or (with `batch`) one seed per item: each item then decodes
    with the noise it would draw alone with its seed."""
    example = "0, 1, 2, ... (or None for a random one)"
    if batch is not None and isinstance(seed, (list, tuple)):
        if len(seed) != batch:
            raise InputError("seed lists one seed per latent of the batch.", received=f"{len(seed)} seeds",
                             expected=f"{batch} seeds, or one int", fix="pass seed=0, or a list as long as the batch")
        return [check_int("seed", s, 0, MAX_SEED, example) for s in seed]
    return None if seed is None else check_int("seed", seed, 0, MAX_SEED, example)


def check_guidance(guidance) -> float:
    ok = isinstance(guidance, numbers.Real) and not isinstance(guidance, bool) and math.isfinite(guidance)
    if not ok or not 0 <= guidance <= MAX_GUIDANCE:
        raise InputError("guidance must be a finite number.", received=repr(guidance)[:80],
                         expected=f"a number in [0, {MAX_GUIDANCE:g}] (1 = no guidance; the teacher's default 5)",
                         fix="pass guidance=5.0")
    return float(guidance)


def check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"Unknown {name}.", received=repr(value)[:80], expected=", ".join(choices),
                         fix=f"pass {name}={choices[0]!r}")


def check_stats(stats, shape: tuple[int, int, int]) -> dict[str, Tensor] | None:
    """The encoder statistics of a raw latent of model-form `shape` (C, h, w): `mean` and `var` of one value per
    channel, or one per position."""
    if stats is None:
        return None
    if not isinstance(stats, dict) or not {"mean", "var"} <= set(stats):
        given = f"a dict of {sorted(map(str, stats))}" if isinstance(stats, dict) else repr(stats)[:120]
        raise InputError("stats must be a dict with 'mean' and 'var'.", received=given,
                         expected="{'mean': tensor, 'var': tensor}", fix="pass your VAE / encoder's statistics")
    out = {}
    for key in ("mean", "var"):
        t = as_float_tensor(stats[key], f"stats[{key!r}]")
        if tuple(t.shape) not in ((shape[0],), tuple(shape)):
            raise InputError(f"stats[{key!r}] has the wrong shape.", received=f"shape {tuple(t.shape)}",
                             expected=f"[{shape[0]}] (per channel) or {list(shape)} (per position)",
                             fix="pass the statistics of the encoder that produced this latent space")
        out[key] = t.float()
        if not torch.isfinite(out[key]).all() or (key == "var" and (out[key] < 0).any()):
            raise InputError(f"stats[{key!r}] holds NaN{', Inf or negative' if key == 'var' else ' or Inf'} values.",
                             expected="finite numbers", fix="recompute the statistics")
    return out
