"""Rotary position embeddings in real arithmetic (complex tensors do not export to ONNX).

Pairs of consecutive channels (2i, 2i+1) rotate by angle i. Angles are computed in float64 and the rotation runs
in float32, so the tables agree with the official complex-number version to float32 rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _axis_freqs(head_dim: int, theta: float) -> Tensor:
    k = torch.arange(head_dim // 4, dtype=torch.float64)
    return theta ** (-4.0 * k / head_dim)  # [head_dim/4]


def ntk_theta(theta: float, head_dim: int, grid: int, ref_grid: float) -> float:
    """NTK-aware base per axis: theta * (grid/ref)^(d/(d-2)), d the per-axis dim (head_dim/2)."""
    d = head_dim // 2
    return theta * (grid / ref_grid) ** (d / (d - 2))


def rope_2d_angles(
    head_dim: int, grid_h: int, grid_w: int, *, theta: float, scale: float, ref_grid: float | None = None
) -> Tensor:
    """Angles [grid_h*grid_w, head_dim/2] for a row-major token grid, x and y interleaved pair by pair."""
    theta_x = theta if ref_grid is None else ntk_theta(theta, head_dim, grid_w, ref_grid)
    theta_y = theta if ref_grid is None else ntk_theta(theta, head_dim, grid_h, ref_grid)
    x_pos = torch.linspace(0, scale, grid_w, dtype=torch.float64)
    y_pos = torch.linspace(0, scale, grid_h, dtype=torch.float64)
    ax = torch.outer(x_pos, _axis_freqs(head_dim, theta_x))  # [W, d/4]
    ay = torch.outer(y_pos, _axis_freqs(head_dim, theta_y))  # [H, d/4]
    ax = ax[None].expand(grid_h, -1, -1)  # [H, W, d/4]
    ay = ay[:, None].expand(-1, grid_w, -1)  # [H, W, d/4]
    return torch.stack([ax, ay], dim=-1).reshape(grid_h * grid_w, head_dim // 2)  # [L, d/2]


def rope_1d_angles(head_dim: int, length: int, *, theta: float) -> Tensor:
    """Angles [length, head_dim/2] for positions 0..length-1."""
    freqs = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    return torch.outer(torch.arange(length, dtype=torch.float64), freqs)


def rotation(angles: Tensor, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """(cos, sin) tables in float32."""
    return angles.cos().to(device, torch.float32), angles.sin().to(device, torch.float32)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [..., N, D] by tables [N, D/2]; returns x's dtype."""
    pairs = x.float().unflatten(-1, (-1, 2))  # [..., N, D/2, 2]
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)  # [..., N, D/2, 2]
    return out.flatten(-2).to(x.dtype)
