"""Memory estimates: the weights, the largest live activations of one network call, the sampler's image state; and
the sizes people write for them ("8GiB"). The per-value counts were measured tensor by tensor (bench/memory.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pid_sdk.config import PiDConfig
from pid_sdk.errors import InputError

# The sampler's fp32 image-wide tensors, per output value, while the network runs: noisy image, velocity, noise and
# the x0 being formed (4) whole; windowed, also the blended velocity being summed (5). Between calls, as x0 is
# formed: x, v, x0 and the last noise (4) and three float64 temporaries of a block of rows.
STATE_COPIES = {"whole": 4, "windowed": 5}
SAMPLER_COPIES, X0_TEMPORARY_BYTES = 4, 24
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes: the weights; one network call's activations and conditioning; the sampler's image-wide state while
    the network runs; the sampler's own peak between calls (its state included). The peak is the larger moment."""

    weights: int
    activations: int
    image_state: int
    sampler: int

    @property
    def total(self) -> int:
        return self.weights + max(self.activations + self.image_state, self.sampler)


def estimate_memory(cfg: PiDConfig, params: int, height: int, width: int, *, batch: int = 1,
                    window: tuple[int, int] | None = None, overlap: int | None = None, per_call: int = 1,
                    weight_bytes: int = 2, activation_bytes: int = 2) -> MemoryEstimate:
    """The peak of a decode of [batch] HxW outputs, whole or as windows of `window` run `per_call` at a time
    (activations of one call: they do not grow with the output; the image state does). `weight_bytes` and
    `activation_bytes` per value: 2 for bf16 (the GPU default; the reference policy keeps fp32 weights: 4), 4 on
    the CPU. Measured against decodes by bench/memory.py and tests/test_memory.py."""
    from pid_sdk.sampling import X0_BLOCK

    values = batch * 3 * height * width
    state = 4 * STATE_COPIES["whole" if window is None else "windowed"] * values
    sampler = 4 * SAMPLER_COPIES * values + X0_TEMPORARY_BYTES * min(values, X0_BLOCK)
    if window is not None:
        weights = 4 * _window_coverage(height, width, window, overlap)  # the blend weights, held all along
        state, sampler = state + weights, sampler + weights
        height, width, batch = min(window[0], height), min(window[1], width), batch * per_call
    live = max(_pixel_values(cfg, height, width), _patch_values(cfg, height, width))
    activations = activation_bytes * batch * (live + _conditioning_values(cfg, height, width))
    return MemoryEstimate(weight_bytes * params, activations, state, sampler)


def _window_coverage(height: int, width: int, window: tuple[int, int], overlap: int | None) -> int:
    """Pixels of all windows together (overlaps counted once per window)."""
    from pid_sdk.windows import default_overlap, plan_windows

    wh, ww = min(window[0], height), min(window[1], width)
    overlap = default_overlap(wh, ww, 1) if overlap is None else overlap
    return len(plan_windows(height, width, (wh, ww), overlap)) * wh * ww


def _pixel_values(cfg: PiDConfig, height: int, width: int) -> int:
    """A PiT block's live values: the pixel stream, its six adaLN chunks and the MLP's hidden before and after its
    activation, per pixel."""
    b = cfg.backbone
    return height * width * (7 * b.pixel_hidden_size + 2 * b.pixel_mlp_hidden_size)


def _patch_values(cfg: PiDConfig, height: int, width: int) -> int:
    """An MM-DiT block's live values per token (the text tokens too: attention is joint): residual, qkv, attention
    output, adaLN chunks, the SwiGLU pair."""
    b = cfg.backbone
    tokens = (height // b.patch_size) * (width // b.patch_size) + b.txt_max_length
    return tokens * (b.hidden_size * 6 + 2 * b.swiglu_hidden_size)


def _conditioning_values(cfg: PiDConfig, height: int, width: int) -> int:
    """The latent's injection tokens and gate offsets, held through the call: per token and head, the hidden width
    and the gate's."""
    b, a = cfg.backbone, cfg.adapter
    if a is None:
        return 0
    tokens = (height // b.patch_size) * (width // b.patch_size)
    heads = cfg.num_gates + (1 if a.pit_inject else 0)
    gate = b.hidden_size if a.gate == "per_token_per_dim" else 1
    return heads * tokens * (b.hidden_size + gate)


def parse_memory(value, name: str = "max_memory") -> int:
    """Bytes from an int or from text such as "8GiB", "512 MiB", "24GB" (GB = 10**9 bytes, GiB = 2**30); `name`
    is the argument's (or CLI flag's) name for the error."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    text = value if isinstance(value, str) else ""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*", text, re.IGNORECASE)
    if match is None or float(match[1]) <= 0:
        raise InputError(f"{name} takes an amount of memory.", received=repr(value)[:80],
                         expected="a positive number of bytes, or text such as 8GiB, 512MiB, 24GB",
                         fix=f"pass {name}{' ' if name.startswith('--') else '='}16GiB (the device memory the decode "
                             "may use, weights included)")
    return int(float(match[1]) * UNITS[(match[2] or "").lower()])


def format_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
