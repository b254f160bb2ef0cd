"""Rough memory estimates for `pid-sdk info`: weights, the largest live activations of one step, the image state."""

from __future__ import annotations

from pid_sdk.config import PiDConfig


def estimate_memory(cfg: PiDConfig, params: int, height: int, width: int, batch: int = 1,
                    window: tuple[int, int] | None = None) -> dict[str, int]:
    """Bytes: the weights, the activations of one network call (of one `window` where given: they do not grow
    with the output), and the sampler's image-wide fp32 state (the noisy image, the velocity, the noise, the
    windows' blended sum), which does."""
    image = {"image_state_fp32": 4 * 4 * batch * 3 * height * width}
    if window is not None:
        height, width = min(window[0], height), min(window[1], width)
    b = cfg.backbone
    pixels = batch * height * width
    tokens = batch * (height // b.patch_size) * (width // b.patch_size)
    # PiT: the per-pixel adaLN output (6 x pixel channels per pixel) beside ~4 pixel-stream tensors.
    pit = pixels * b.pixel_hidden_size * (6 + 4)
    # MM-DiT: residual, qkv (3x), attention output and the SwiGLU hidden (2 x 2/3 x mlp) per token.
    patch = tokens * (b.hidden_size * 6 + 2 * b.swiglu_hidden_size)
    return {"weights_bf16": 2 * params, "weights_fp32": 4 * params, "activations_bf16": 2 * max(pit, patch), **image}
