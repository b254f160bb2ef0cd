"""The PiD latent adapter `lq_proj` (spec section 5.1) and its injection gate (section 5.2)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pid_sdk.config import AdapterConfig


def unpatchify(z: Tensor, factor: int) -> Tensor:
    """[B, C*f*f, h, w] -> [B, C, h*f, w*f], channels ordered (c, pi, pj) as FLUX.2 patchifies."""
    b, c, h, w = z.shape
    z = z.reshape(b, c // (factor * factor), factor, factor, h, w)  # [B, C, f, f, h, w]
    z = z.permute(0, 1, 4, 2, 5, 3)  # [B, C, h, f, w, f]
    return z.reshape(b, c // (factor * factor), h * factor, w * factor)


def align_to_grid(z: Tensor, grid: tuple[int, int], ratio: Fraction) -> Tensor:
    """Bring a latent to the patch grid: nearest upsampling, identity, or fold of f x f cells into channels."""
    if ratio > 1:
        return F.interpolate(z, size=grid, mode="nearest")
    if ratio == 1:
        return z if tuple(z.shape[-2:]) == grid else F.interpolate(z, size=grid, mode="bilinear")
    f = int(1 / ratio)
    size = (grid[0] * f, grid[1] * f)
    if tuple(z.shape[-2:]) != size:
        z = F.interpolate(z, size=size, mode="bilinear")
    return F.pixel_unshuffle(z, f)  # channel order c*f*f + i*f + j


class ResBlock(nn.Module):
    """Pre-activation residual block: GN -> SiLU -> conv -> GN -> SiLU -> conv, plus the input."""

    def __init__(self, dim: int, groups: int, padding_mode: str):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(groups, dim), nn.SiLU(), nn.Conv2d(dim, dim, 3, padding=1, padding_mode=padding_mode),
            nn.GroupNorm(groups, dim), nn.SiLU(), nn.Conv2d(dim, dim, 3, padding=1, padding_mode=padding_mode),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class LatentGate(nn.Module):
    """s + sigmoid(W[s, l] + b - exp(log_alpha) * sigma_latent) * l: noisier latents are trusted less.

    W[s, l] + b splits into W_s s (every step) and W_l l + b - exp(log_alpha) sigma (once per decode: `offset`).
    """

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.dim = dim
        self.content_proj = nn.Linear(2 * dim, width)
        self.log_alpha = nn.Parameter(torch.tensor(0.0))

    def offset(self, feat: Tensor, latent_sigma: Tensor) -> Tensor:
        """The step-independent part of the gate logits, [B, L, width], in the features' dtype.

        Held for the whole decode (one per gate), so bf16 features keep it bf16: half the memory of fp32.
        """
        logits = F.linear(feat, self.content_proj.weight[:, self.dim:], self.content_proj.bias)
        return (logits - self.log_alpha.exp() * latent_sigma.float().view(-1, 1, 1)).to(feat.dtype)

    def gate(self, s: Tensor, offset: Tensor) -> Tensor:
        return torch.sigmoid(F.linear(s, self.content_proj.weight[:, : self.dim]) + offset)

    def forward(self, s: Tensor, feat: Tensor, offset: Tensor) -> Tensor:
        # The sum is fp32 (the gate is). Cast to the parameters' dtype: fp32 under autocast, as the official runtime
        # keeps the residual stream after the first gate; bf16 in a model cast to bf16, so its matmuls stay bf16.
        return (s + self.gate(s, offset) * feat).to(self.content_proj.weight.dtype)

    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.content_proj.weight, std=0.01)
        nn.init.constant_(self.content_proj.bias, 2.0)
        nn.init.constant_(self.log_alpha, torch.log(torch.tensor(5.0)).item())


@dataclass
class LatentFeatures:
    """The adapter's output for one decode; independent of the sampler step. The PiT injection (v1.5) is last."""

    tokens: list[Tensor]  # one [B, L, D] per gate
    offsets: list[Tensor]  # the matching gate offsets, [B, L, width]


class LatentAdapter(nn.Module):
    def __init__(self, cfg: AdapterConfig, dim: int, patch_size: int, num_gates: int):
        super().__init__()
        self.cfg = cfg
        self.ratio = Fraction(cfg.sr_scale * cfg.latent_factor, cfg.unpatchify_factor * patch_size)
        fold = int(1 / self.ratio) if self.ratio < 1 else 1
        hd, pad = cfg.hidden_dim, cfg.padding_mode
        conv_in = cfg.latent_channels // cfg.unpatchify_factor**2 * fold * fold
        self.latent_proj = nn.Sequential(
            nn.Conv2d(conv_in, hd, 3, padding=1, padding_mode=pad),
            nn.SiLU(),
            nn.Conv2d(hd, hd, 3, padding=1, padding_mode=pad),
            *(ResBlock(hd, cfg.num_groups, pad) for _ in range(cfg.num_res_blocks)),
        )
        self.output_heads = nn.ModuleList(nn.Linear(hd, dim) for _ in range(num_gates))
        width = dim if cfg.gate == "per_token_per_dim" else 1
        self.gate_modules = nn.ModuleList(LatentGate(dim, width) for _ in range(num_gates))
        if cfg.pit_inject:
            self.pit_head = nn.Linear(hd, dim)

    def forward(self, latent: Tensor, grid: tuple[int, int]) -> tuple[list[Tensor], Tensor | None]:
        z = latent if self.cfg.unpatchify_factor == 1 else unpatchify(latent, self.cfg.unpatchify_factor)
        z = self.latent_proj(align_to_grid(z, grid, self.ratio))  # [B, Hd, gh, gw]
        tokens = z.flatten(2).transpose(1, 2)  # [B, L, Hd]
        heads = [head(tokens) for head in self.output_heads]  # each [B, L, D]
        return heads, (self.pit_head(tokens) if self.cfg.pit_inject else None)

    def init_weights(self) -> None:
        for m in self.latent_proj.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        heads = list(self.output_heads) + ([self.pit_head] if self.cfg.pit_inject else [])
        for head in heads:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        for gate in self.gate_modules:
            gate.init_weights()
