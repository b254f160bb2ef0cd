"""Analytic FLOP count of a decode: 2 FLOPs per multiply-accumulate of every matmul, convolution and attention.

Norms, activations, RoPE and the sampler's arithmetic are left out (a few percent at most); this is the count that
achieved TFLOP/s is measured against. `tests/test_flops.py` pins it to hand counts and to PyTorch's own counter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from pid_sdk.config import PiDConfig


@dataclass
class FlopCount:
    """FLOPs of one network step and of the once-per-decode work, by component."""

    step: dict[str, int] = field(default_factory=dict)
    once: dict[str, int] = field(default_factory=dict)
    steps: int = 4

    @property
    def per_step(self) -> int:
        return sum(self.step.values())

    @property
    def per_decode(self) -> int:
        return self.steps * self.per_step + sum(self.once.values())

    def add(self, part: dict[str, int], name: str, flops: int) -> None:
        part[name] = part.get(name, 0) + flops


def linear(rows: int, fan_in: int, fan_out: int) -> int:
    return 2 * rows * fan_in * fan_out


def attention(batch: int, q_len: int, kv_len: int, dim: int) -> int:
    """Q K^T and the weighted sum of V over all heads (heads * head_dim = dim)."""
    return 2 * 2 * batch * q_len * kv_len * dim


def conv3x3(batch: int, pixels: int, c_in: int, c_out: int) -> int:
    return 2 * batch * pixels * 9 * c_in * c_out


def decode_flops(cfg: PiDConfig, height: int, width: int, *, steps: int = 4, batch: int = 1,
                 text_len: int | None = None, window: tuple[int, int] | None = None,
                 overlap: int = 0) -> FlopCount:
    """The FLOPs of decoding `batch` images of height x width in `steps` network calls (no guidance); with
    `window`, those of its windows (pid_sdk/windows.py: each window a whole decode of its size, its conditioning made
    at every step)."""
    if window is not None:
        from pid_sdk.windows import plan_windows

        plan = plan_windows(height, width, (min(window[0], height), min(window[1], width)), overlap)
        one = decode_flops(cfg, plan[0].height, plan[0].width, steps=steps, batch=batch, text_len=text_len)
        if len(plan) == 1:
            return one
        step = {k: len(plan) * v for k, v in one.step.items()}
        for k, v in one.once.items():  # a window's conditioning is made again at every step (WindowedStep)
            step[k] = step.get(k, 0) + len(plan) * v
        return FlopCount(step, {}, steps)
    b = cfg.backbone
    n_txt = b.txt_max_length if text_len is None else min(text_len, b.txt_max_length)
    count = FlopCount(steps=steps)
    _backbone_step(count, cfg, height, width, batch, n_txt)
    count.add(count.once, "text embedder", linear(batch * n_txt, b.txt_embed_dim, b.hidden_size))
    if cfg.adapter is not None:
        _adapter(count, cfg, height, width, batch)
    return count


def _backbone_step(count: FlopCount, cfg: PiDConfig, height: int, width: int, batch: int, n_txt: int) -> None:
    b, step = cfg.backbone, count.step
    d, p, pixels = b.hidden_size, b.patch_size, height * width
    n_img = pixels // (p * p)
    rows_img, rows_txt = batch * n_img, batch * n_txt
    step["patch embedder"] = linear(rows_img, b.in_channels * p * p, d)
    step["timestep embedder"] = linear(batch, 256, d) + linear(batch, d, d)
    for i in range(b.patch_depth):
        text_out = i != b.patch_depth - 1
        count.add(step, "MM-DiT adaLN", 2 * linear(batch, d, 6 * d))
        count.add(step, "MM-DiT qkv", linear(rows_img + rows_txt, d, 3 * d))
        count.add(step, "MM-DiT attention", attention(batch, n_img + n_txt, n_img + n_txt, d))
        mlp_rows = rows_img + (rows_txt if text_out else 0)  # the last block's text stream stops after attention
        count.add(step, "MM-DiT proj + SwiGLU", linear(mlp_rows, d, d) + 3 * linear(mlp_rows, d, b.swiglu_hidden_size))
    ppc, cp, a = b.pixels_per_patch, b.pixel_hidden_size, b.pixel_attn_hidden_size
    step["pixel embedder"] = linear(batch * pixels, b.in_channels, cp)
    for _ in range(b.pixel_depth):
        count.add(step, "PiT adaLN", linear(rows_img, d, 6 * ppc * cp))
        count.add(step, "PiT compress / expand", 2 * linear(rows_img, ppc * cp, a))
        count.add(step, "PiT attention", linear(rows_img, a, 3 * a) + attention(batch, n_img, n_img, a)
                  + linear(rows_img, a, a))
        count.add(step, "PiT MLP", 2 * linear(batch * pixels, cp, b.pixel_mlp_hidden_size))
    step["final layer"] = linear(batch * pixels, cp, b.in_channels)
    if cfg.adapter is not None:
        width_gate = _gate_width(cfg)
        gates = cfg.num_gates + (1 if cfg.adapter.pit_inject else 0)
        step["gates"] = gates * linear(rows_img, d, width_gate)


def _adapter(count: FlopCount, cfg: PiDConfig, height: int, width: int, batch: int) -> None:
    a, b = cfg.adapter, cfg.backbone
    grid = (height // b.patch_size) * (width // b.patch_size)
    ratio = Fraction(a.sr_scale * a.latent_factor, a.unpatchify_factor * b.patch_size)
    fold = int(1 / ratio) if ratio < 1 else 1
    c_in = a.latent_channels // a.unpatchify_factor**2 * fold * fold
    hd = a.hidden_dim
    convs = conv3x3(batch, grid, c_in, hd) + conv3x3(batch, grid, hd, hd)
    convs += 2 * a.num_res_blocks * conv3x3(batch, grid, hd, hd)
    heads = cfg.num_gates + (1 if a.pit_inject else 0)
    count.once["adapter convolutions"] = convs
    count.once["adapter heads"] = heads * linear(batch * grid, hd, b.hidden_size)
    count.once["gate offsets"] = heads * linear(batch * grid, b.hidden_size, _gate_width(cfg))


def _gate_width(cfg: PiDConfig) -> int:
    return cfg.backbone.hidden_size if cfg.adapter.gate == "per_token_per_dim" else 1


def matmul_rate() -> float:
    """The measured side of a time estimate: FLOP/s of an fp32 1024x1024 matrix product on this machine's torch
    threads (a 30-100 ms measurement)."""
    a = torch.randn(1024, 1024)
    a @ a  # the first call pays for allocation
    started = time.perf_counter()
    for _ in range(3):
        a @ a
    return 3 * 2 * 1024 ** 3 / max(time.perf_counter() - started, 1e-9)


def time_floor(flops: float, rate: float, long: float = 120.0) -> str:
    """'at least N min here (...)' where `flops` at `rate` FLOP/s take longer than `long` seconds, else ''. Real
    runs are slower than the matmul rate (attention, norms, a runtime's own work): a floor, never a promise."""
    seconds = flops / rate
    if seconds < long:
        return ""
    return (f"at least {seconds / 60:.0f} min here ({flops / 1e12:.0f} TFLOP at the {rate / 1e9:.0f} GFLOP/s this "
            "machine multiplies matrices at)")
