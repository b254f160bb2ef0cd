"""The MM-DiT joint attention computed over its text and image parts, merged exactly through the log-sum-exp.

One call over [text, image] runs 16684 tokens at 2048x2048 (300 text + 128 x 128 patches): a length attention
kernels handle slower than the aligned 16384 of the image alone (docs/benchmarks.md). Attention over a union of key
sets is the softmax-weighted mix of the attention over each set, the weights given by each set's log-sum-exp:

    out = sigmoid(lse_a - lse_b) * out_a + sigmoid(lse_b - lse_a) * out_b

so image queries x image keys run as one aligned call and the three small text calls are merged in. Same result
as one call, up to rounding; the reference path (and every export) keeps the single call.
"""

from __future__ import annotations

import torch
from torch import Tensor

# kernels that return the log-sum-exp beside the output; "math" is the plain formula in float32
LSE_KERNELS = ("cudnn", "flash", "efficient", "cpu", "math")


def attention_with_lse(q: Tensor, k: Tensor, v: Tensor, kernel: str) -> tuple[Tensor, Tensor]:
    """q [B, h, n, Dh], k, v [B, h, m, Dh] -> out [B, h, n, Dh] and the natural log-sum-exp of the scaled scores
    [B, h, n, 1] in float32."""
    q, k, v = _autocast(q, k, v)
    b, h, n, _ = q.shape
    aten = torch.ops.aten
    if kernel == "cudnn":
        out, lse = aten._scaled_dot_product_cudnn_attention(q, k, v, None, True)[:2]
    elif kernel == "flash":
        out, lse = aten._scaled_dot_product_flash_attention(q, k, v)[:2]
    elif kernel == "efficient":
        out, lse = aten._scaled_dot_product_efficient_attention(q, k, v, None, True)[:2]
    elif kernel == "cpu":
        out, lse = aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
    elif kernel == "math":
        return _math_attention(q, k, v)
    else:
        raise ValueError(f"unknown log-sum-exp kernel {kernel!r}; one of {LSE_KERNELS}")
    # kernels differ in the layout of the statistics ([B, h, n], [B, h, n, 1], or padded rows): take the first n
    return out, lse.reshape(b, h, -1)[..., :n, None].float()  # [B, h, n, 1]


def _math_attention(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    scores = (q.float() @ k.float().transpose(-2, -1)) * q.shape[-1] ** -0.5  # [B, h, n, m]
    lse = scores.logsumexp(-1, keepdim=True)  # [B, h, n, 1]
    return ((scores - lse).exp() @ v.float()).to(v.dtype), lse


def _autocast(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The kernels are called below SDPA, so autocast does not reach them: give them the dtype it would have."""
    device = q.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        return q.to(dtype), k.to(dtype), v.to(dtype)
    return q, k, v


def merge(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> Tensor:
    """Attention over the keys of `a` and of `b` together, from each part's (out, lse)."""
    (out_a, lse_a), (out_b, lse_b) = a, b
    weight_a = torch.sigmoid(lse_a - lse_b)  # [B, h, n, 1]: the share of a's keys in the softmax
    mixed = out_b.float() + weight_a * (out_a.float() - out_b.float())  # [B, h, n, Dh]
    return mixed.to(out_a.dtype)


def split_joint_attention(image: tuple[Tensor, Tensor, Tensor], text: tuple[Tensor, Tensor, Tensor],
                          kernel: str) -> tuple[Tensor, Tensor]:
    """Joint attention of image and text tokens (q, k, v each [B, h, n, Dh]) as four calls -> the image and the
    text output, each [B, n, h*Dh]."""
    (qx, kx, vx), (qy, ky, vy) = image, text
    ax = merge(attention_with_lse(qx, kx, vx, kernel), attention_with_lse(qx, ky, vy, kernel))  # [B, h, L, Dh]
    ay = merge(attention_with_lse(qy, kx, vx, kernel), attention_with_lse(qy, ky, vy, kernel))  # [B, h, Ltxt, Dh]
    return ax.transpose(1, 2).flatten(2), ay.transpose(1, 2).flatten(2)  # [B, L, D], [B, Ltxt, D]
