"""The PixelDiT T2I backbone (spec section 2): MM-DiT patch blocks over [text, image], then PiT pixel blocks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pid_sdk.config import BackboneConfig
from pid_sdk.model.layers import (
    PixelMLP,
    Projection,
    RMSNorm,
    SwiGLU,
    TextEmbedder,
    TimestepEmbedder,
    adaln,
    attention,
    modulate,
    pixel_sincos_axes,
    sincos_grid,
)
from pid_sdk.model.rope import apply_rope, rope_1d_angles, rope_2d_angles, rotation
from pid_sdk.model.split_attention import split_joint_attention

Rope = tuple[Tensor, Tensor]


@dataclass
class Geometry:
    """Everything that depends on the image size and text length but not on the step: computed once per decode."""

    height: int
    width: int
    image_rope: Rope  # patch attention, [L, head_dim/2]
    text_rope: Rope  # [Ltxt, head_dim/2]
    pixel_rope: Rope  # PiT attention over patches, [L, pixel_head_dim/2]
    pixel_pos_x: Tensor  # [W, pixel_hidden/2] in float64; the [H, W, pixel_hidden] table is built per step
    pixel_pos_y: Tensor  # [H, pixel_hidden/2]
    patch: int

    @property
    def grid(self) -> tuple[int, int]:
        return self.height // self.patch, self.width // self.patch


def linear_rows(linear: nn.Module, x: Tensor, rows: Tensor) -> Tensor:
    """`linear(x)[..., rows]` without computing the other outputs (any layer with a `rows` method, or nn.Linear)."""
    if hasattr(linear, "rows"):
        return linear.rows(x, rows)
    bias = None if linear.bias is None else linear.bias[rows]
    return F.linear(x, linear.weight[rows], bias)


def patchify(x: Tensor, p: int) -> Tensor:
    """[B, C, H, W] -> [B, L, C*p*p] in F.unfold's order (c, kh, kw), patches row-major; plain reshapes export well."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)  # [B, gh, gw, C, p, p]
    return x.reshape(b, (h // p) * (w // p), c * p * p)


class MMDiTJointAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.compute_dtype: torch.dtype | None = None
        self.quantize_inputs: nn.Module | None = None  # FP8 Q/DQ of q, k, v in exported graphs (export/fp8.py)
        self.split_kernel: str | None = None  # text and image parts as separate calls (split_attention.py)
        self.sdpa: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None  # instead of PyTorch's SDPA (FP8 forms)
        self.qkv_x = nn.Linear(dim, 3 * dim, bias=False)
        self.qkv_y = nn.Linear(dim, 3 * dim, bias=False)
        self.q_norm_x, self.k_norm_x = RMSNorm(self.head_dim), RMSNorm(self.head_dim)
        self.q_norm_y, self.k_norm_y = RMSNorm(self.head_dim), RMSNorm(self.head_dim)
        self.proj_x = nn.Linear(dim, dim)
        self.proj_y = nn.Linear(dim, dim)

    def _qkv(self, linear: nn.Linear, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return linear(t).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [3, B, heads, n, Dh]

    def forward(self, x: Tensor, y: Tensor, image_rope: Rope, text_rope: Rope) -> tuple[Tensor, Tensor]:
        qx, kx, vx = self._qkv(self.qkv_x, x)  # [B, heads, L, Dh]
        qy, ky, vy = self._qkv(self.qkv_y, y)  # [B, heads, Ltxt, Dh]
        qx, kx = apply_rope(self.q_norm_x(qx), *image_rope), apply_rope(self.k_norm_x(kx), *image_rope)
        qy, ky = apply_rope(self.q_norm_y(qy), *text_rope), apply_rope(self.k_norm_y(ky), *text_rope)
        if self.split_kernel is not None:
            return split_joint_attention((qx, kx, vx), (qy, ky, vy), self.split_kernel)  # [B, L, D], [B, Ltxt, D]
        out = attention(torch.cat([qy, qx], 2), torch.cat([ky, kx], 2), torch.cat([vy, vx], 2),
                        self.compute_dtype, self.quantize_inputs, self.sdpa)  # [B, Ltxt+L, D]
        n_text = y.shape[1]
        return out[:, n_text:], out[:, :n_text]


class MMDiTBlock(nn.Module):
    """Dual-stream block; both streams are modulated by the timestep only."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        d = cfg.hidden_size
        self.norm_x1, self.norm_y1, self.norm_x2, self.norm_y2 = RMSNorm(d), RMSNorm(d), RMSNorm(d), RMSNorm(d)
        self.attn = MMDiTJointAttention(d, cfg.num_heads)
        self.mlp_x = SwiGLU(d, cfg.swiglu_hidden_size)
        self.mlp_y = SwiGLU(d, cfg.swiglu_hidden_size)
        self.adaLN_modulation_img = adaln(d, 6)
        self.adaLN_modulation_txt = adaln(d, 6)

    def forward(self, x: Tensor, y: Tensor, c: Tensor, geo: Geometry, text_out: bool = True) -> tuple[Tensor, Tensor]:
        mx = self.adaLN_modulation_img(c).chunk(6, dim=-1)  # 6 x [B, 1, D]
        my = self.adaLN_modulation_txt(c).chunk(6, dim=-1)
        ax, ay = self.attn(modulate(self.norm_x1(x), mx[0], mx[1]), modulate(self.norm_y1(y), my[0], my[1]),
                           geo.image_rope, geo.text_rope)
        x = x + mx[2] * self.attn.proj_x(ax)
        x = x + mx[5] * self.mlp_x(modulate(self.norm_x2(x), mx[3], mx[4]))
        if not text_out:  # the last block's text output is never read (its branch is frozen in training)
            return x, y
        y = y + my[2] * self.attn.proj_y(ay)
        y = y + my[5] * self.mlp_y(modulate(self.norm_y2(y), my[3], my[4]))
        return x, y


class RotaryAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.compute_dtype: torch.dtype | None = None
        self.quantize_inputs: nn.Module | None = None
        self.sdpa: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None  # instead of PyTorch's SDPA (export/fp8.py)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_norm, self.k_norm = RMSNorm(self.head_dim), RMSNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: Rope) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [B, heads, n, Dh]
        q, k = apply_rope(self.q_norm(q), *rope), apply_rope(self.k_norm(k), *rope)
        return self.proj(attention(q, k, v, self.compute_dtype, self.quantize_inputs, self.sdpa))  # [B, n, dim]


class PiTBlock(nn.Module):
    """Pixel block: per-pixel adaLN, one attention token per patch (4096 -> 1152), expansion, pixel MLP."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        p, c = cfg.pixels_per_patch, cfg.pixel_hidden_size
        self.pixels, self.channels = p, c
        self.norm1, self.norm2 = RMSNorm(c), RMSNorm(c)
        self.compress_to_attn = nn.Linear(p * c, cfg.pixel_attn_hidden_size)
        self.expand_from_attn = nn.Linear(cfg.pixel_attn_hidden_size, p * c)
        self.attn = RotaryAttention(cfg.pixel_attn_hidden_size, cfg.pixel_num_heads)
        self.mlp = PixelMLP(c, cfg.pixel_mlp_hidden_size)
        self.adaLN_modulation = nn.Sequential(nn.Linear(cfg.hidden_size, 6 * p * c))
        self.split_modulation = False

    def forward(self, x: Tensor, s_cond: Tensor, geo: Geometry) -> Tensor:
        bl, p, c = x.shape  # [B*L, 256, 16]
        n_patches = geo.grid[0] * geo.grid[1]
        chunks = self.modulation(s_cond)
        m = chunks(0, 2)  # shift, scale: 2 x [B*L, 256, 16]
        h = modulate(self.norm1(x), m[0], m[1]).reshape(bl // n_patches, n_patches, p * c)  # [B, L, 4096]
        h = self.attn(self.compress_to_attn(h), geo.pixel_rope)  # [B, L, 1152]
        h = self.expand_from_attn(h).reshape(bl, p, c)  # [B*L, 256, 16]
        x = x + chunks(2, 3)[0] * h
        m = chunks(3, 6)  # shift, scale, gate of the MLP
        return x + m[2] * self.mlp(modulate(self.norm2(x), m[0], m[1]))

    def modulation(self, s_cond: Tensor) -> Callable[[int, int], tuple[Tensor, ...]]:
        """`chunks(first, stop)`: chunks first..stop-1 of the six per-pixel adaLN chunks, each [B*L, p*p, C].

        The full projection is 6 * 4096 values a patch (0.8 GB at 2048x2048 in bf16). With `split_modulation`
        only the rows of the chunks asked for are multiplied, so at most half of it is alive at once; exports keep
        the one matmul (a gather of weight rows would stop TensorRT from refitting them).
        """
        p, c = self.pixels, self.channels
        linear = self.adaLN_modulation[0]
        if not self.split_modulation or torch.compiler.is_exporting():
            full = linear(s_cond).view(-1, p, 6, c).unbind(2)  # per pixel: 6 chunks of C
            return lambda first, stop: full[first:stop]

        def chunks(first: int, stop: int) -> tuple[Tensor, ...]:
            rows = torch.arange(6 * p * c, device=s_cond.device).view(p, 6, c)[:, first:stop].reshape(-1)
            out = linear_rows(linear, s_cond, rows)  # [B*L, p * (stop-first) * C]
            return out.view(-1, p, stop - first, c).unbind(2)

        return chunks


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.linear = nn.Linear(dim, out)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.norm(x))


class PixelDiT(nn.Module):
    """Text-to-image backbone. `forward(x, sigma, text)` returns the velocity v = eps - x0."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg
        d, p = cfg.hidden_size, cfg.patch_size
        self.s_embedder = Projection(cfg.in_channels * p * p, d)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = TextEmbedder(cfg.txt_embed_dim, d)
        self.y_pos_embedding = nn.Parameter(torch.zeros(1, cfg.txt_max_length, d))
        self.patch_blocks = nn.ModuleList(MMDiTBlock(cfg) for _ in range(cfg.patch_depth))
        self.pixel_embedder = Projection(cfg.in_channels, cfg.pixel_hidden_size)
        self.pixel_blocks = nn.ModuleList(PiTBlock(cfg) for _ in range(cfg.pixel_depth))
        self.final_layer = FinalLayer(cfg.pixel_hidden_size, cfg.in_channels)

    def set_split_modulation(self, enabled: bool) -> None:
        """Compute the PiT adaLN chunk by chunk (less memory; see PiTBlock.modulation)."""
        for block in self.pixel_blocks:
            block.split_modulation = enabled

    def set_split_attention(self, kernel: str | None) -> None:
        """Run the MM-DiT joint attention as text and image parts on `kernel` (None: one call over both)."""
        for block in self.patch_blocks:
            block.attn.split_kernel = kernel

    def set_joint_sdpa(self, sdpa: Callable[[Tensor, Tensor, Tensor], Tensor] | None) -> None:
        """Run the MM-DiT joint attention with `sdpa` instead of PyTorch's (None: PyTorch's)."""
        for block in self.patch_blocks:
            block.attn.sdpa = sdpa

    def set_attention_dtype(self, dtype: torch.dtype | None) -> None:
        """Run every attention in `dtype` (None: the input dtype)."""
        for m in self.modules():
            if isinstance(m, (MMDiTJointAttention, RotaryAttention)):
                m.compute_dtype = dtype

    # --- once per decode -------------------------------------------------------------------------------------
    def geometry(self, height: int, width: int, text_len: int, device: torch.device | str) -> Geometry:
        cfg = self.cfg
        gh, gw = height // cfg.patch_size, width // cfg.patch_size
        ref = cfg.rope_ref / cfg.patch_size if cfg.rope_mode == "ntk" else None

        def grid_rope(head_dim: int) -> Rope:
            angles = rope_2d_angles(head_dim, gh, gw, theta=cfg.rope_theta, scale=cfg.rope_scale, ref_grid=ref)
            return rotation(angles, device)

        text = rotation(rope_1d_angles(cfg.head_dim, text_len, theta=cfg.text_rope_theta), device)
        pos_x, pos_y = (t.to(device) for t in pixel_sincos_axes(height, width, cfg.pixel_hidden_size))
        return Geometry(height, width, grid_rope(cfg.head_dim), text, grid_rope(cfg.pixel_head_dim), pos_x, pos_y,
                        cfg.patch_size)

    def embed_text(self, text: Tensor) -> Tensor:
        """[B, Ltxt, txt_dim] -> text tokens [B, min(Ltxt, max), D]; does not depend on the step."""
        n = min(text.shape[1], self.cfg.txt_max_length)
        return self.y_embedder(text[:, :n]) + self.y_pos_embedding[:, :n]

    # --- every step ------------------------------------------------------------------------------------------
    def denoise(self, x: Tensor, sigma: Tensor, text_tokens: Tensor, geo: Geometry, latent=None) -> Tensor:
        b = x.shape[0]
        p = self.cfg.patch_size
        t = (1000.0 * sigma.float()).expand(b)
        s = self.s_embedder(patchify(x, p))  # [B, L, D]
        t_emb = self.t_embedder(t)[:, None]  # [B, 1, D]
        c = F.silu(t_emb)
        y = text_tokens
        last = len(self.patch_blocks) - 1
        for i, block in enumerate(self.patch_blocks):
            s = self.inject_patch(i, s, latent)
            s, y = block(s, y, c, geo, text_out=i != last)
        s = self.inject_pixel(F.silu(t_emb + s), latent)  # [B, L, D]
        pixels = self.embed_pixels(x, geo)  # [B*L, p*p, Cp]
        s_cond = s.reshape(-1, s.shape[-1])  # [B*L, D]
        for block in self.pixel_blocks:
            pixels = block(pixels, s_cond, geo)
        return self.unpatchify_pixels(self.final_layer(pixels), b, geo)

    def inject_patch(self, index: int, s: Tensor, latent) -> Tensor:
        return s

    def inject_pixel(self, s: Tensor, latent) -> Tensor:
        return s

    def embed_pixels(self, x: Tensor, geo: Geometry) -> Tensor:
        b, _, h, w = x.shape
        p, gh, gw = self.cfg.patch_size, h // self.cfg.patch_size, w // self.cfg.patch_size
        e = self.pixel_embedder(x.permute(0, 2, 3, 1))  # [B, H, W, Cp]
        # the official code casts the table to the image dtype; casting the axis tables first is the same
        e = e + sincos_grid(geo.pixel_pos_x.to(x.dtype), geo.pixel_pos_y.to(x.dtype))  # [B, H, W, Cp]
        e = e.view(b, gh, p, gw, p, -1).permute(0, 1, 3, 2, 4, 5)  # [B, gh, gw, p, p, Cp]
        return e.reshape(b * gh * gw, p * p, -1)  # [B*L, p*p, Cp], in-patch index = row*p + col

    def unpatchify_pixels(self, out: Tensor, b: int, geo: Geometry) -> Tensor:
        """[B*L, p*p, C] pixel tokens -> [B, C, H, W]; the same as F.fold over non-overlapping patches."""
        p = self.cfg.patch_size
        gh, gw = geo.grid
        out = out.view(b, gh, gw, p, p, -1).permute(0, 5, 1, 3, 2, 4)  # [B, C, gh, p, gw, p]
        return out.reshape(b, -1, geo.height, geo.width)

    def forward(self, x: Tensor, sigma: Tensor, text: Tensor) -> Tensor:
        geo = self.geometry(x.shape[-2], x.shape[-1], min(text.shape[1], self.cfg.txt_max_length), x.device)
        return self.denoise(x, sigma, self.embed_text(text), geo)
