"""Building blocks shared by the backbone and the adapter. Submodule names equal the official checkpoint keys."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """Normalises in float32 and rounds back to the input dtype before the (possibly fp32) weight multiplies."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        if torch.compiler.is_exporting():  # the plain formula exports to ops every ONNX / TensorRT version has
            normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        else:  # one fused kernel in eager mode
            normed = F.rms_norm(xf, (xf.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


def timestep_features(t: Tensor, dim: int = 256, max_period: float = 10.0) -> Tensor:
    """[B] timesteps in [0, 1000] -> [B, dim] as cat[cos, sin]; the official max_period is 10, not 10000."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: Tensor) -> Tensor:
        # like the official code: the fp32 features take the MLP's dtype (a no-op for fp32 weights under autocast)
        return self.mlp(timestep_features(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class Projection(nn.Module):
    """A Linear under the name `proj` (checkpoint layout of the embedders)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class TextEmbedder(nn.Module):
    def __init__(self, txt_dim: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(txt_dim, hidden_size)
        self.norm = RMSNorm(hidden_size)

    def forward(self, y: Tensor) -> Tensor:
        return self.norm(self.proj(y))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class PixelMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def adaln(dim: int, chunks: int) -> nn.Sequential:
    """adaLN projection of the (already SiLU-ed) conditioning; a Sequential so the key is `.0.weight`."""
    return nn.Sequential(nn.Linear(dim, chunks * dim))


def attention(q: Tensor, k: Tensor, v: Tensor, compute_dtype: torch.dtype | None = None,
              quantize: nn.Module | None = None, sdpa: Callable[..., Tensor] | None = None) -> Tensor:
    """q, k, v [B, heads, N, Dh] -> [B, N, heads*Dh].

    `compute_dtype` runs the attention in another dtype and casts back: TensorRT-RTX builds its fused attention
    from fp16 inputs (bf16 and fp32 attention crash its CPU build). `quantize(q, k, v)` rounds the inputs first
    (the FP8 Q/DQ of an exported graph, export/fp8.py; a calibration observer). `sdpa` replaces PyTorch's
    scaled-dot-product attention (the runtime's FP8 attention, pid_sdk/runtime/fp8_attention.py).
    """
    if quantize is not None:
        q, k, v = quantize(q, k, v)
    if compute_dtype is not None:
        dtype = v.dtype
        q, k, v = q.to(compute_dtype), k.to(compute_dtype), v.to(compute_dtype)
    out = (sdpa or F.scaled_dot_product_attention)(q, k, v)  # [B, heads, N, Dh]
    if compute_dtype is not None:
        out = out.to(dtype)
    return out.transpose(1, 2).flatten(2)  # [B, N, heads*Dh]


def pixel_sincos_axes(height: int, width: int, dim: int) -> tuple[Tensor, Tensor]:
    """The absolute pixel position table by axis, float64: x (columns) [W, dim/2] and y (rows) [H, dim/2]."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)

    def encode(pos: Tensor) -> Tensor:
        angles = torch.outer(pos, omega)  # [n, dim/4]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)  # [n, dim/2]

    return encode(torch.arange(width, dtype=torch.float64)), encode(torch.arange(height, dtype=torch.float64))


def sincos_grid(x_table: Tensor, y_table: Tensor) -> Tensor:
    """[W, d/2] and [H, d/2] -> [H, W, d]: x first, then y (the per-pixel table, built where it is used)."""
    height, width = y_table.shape[0], x_table.shape[0]
    ex = x_table[None].expand(height, -1, -1)  # [H, W, d/2]
    ey = y_table[:, None].expand(-1, width, -1)  # [H, W, d/2]
    return torch.cat([ex, ey], dim=-1)  # [H, W, d]


def pixel_sincos(height: int, width: int, dim: int) -> Tensor:
    """Absolute pixel position table [H, W, dim] in float64: x (column) first, then y; sin then cos per half."""
    return sincos_grid(*pixel_sincos_axes(height, width, dim))
