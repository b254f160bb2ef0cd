"""Rough memory estimates for `pid-sdk info`: weights plus the largest live activations of one step."""

from __future__ import annotations

from pid_sdk.config import PiDConfig


def estimate_memory(cfg: PiDConfig, params: int, height: int, width: int, batch: int = 1) -> dict[str, int]:
    b = cfg.backbone
    pixels = batch * height * width
    tokens = batch * (height // b.patch_size) * (width // b.patch_size)
    # PiT: the per-pixel adaLN output (6 x pixel channels per pixel) beside ~4 pixel-stream tensors.
    pit = pixels * b.pixel_hidden_size * (6 + 4)
    # MM-DiT: residual, qkv (3x), attention output and the SwiGLU hidden (2 x 2/3 x mlp) per token.
    patch = tokens * (b.hidden_size * 6 + 2 * b.swiglu_hidden_size)
    return {"weights_bf16": 2 * params, "weights_fp32": 4 * params, "activations_bf16": 2 * max(pit, patch)}
