"""FP8 (E4M3) facts every FP8 path shares: the format's largest value, and which linear layers run in FP8.

The PyTorch FP8 matmuls (runtime/fp8_linear.py), the exported Q/DQ graphs (export/fp8.py) and the FP8 attention
(runtime/fp8_attention.py) all read them from here.

Only the MM-DiT blocks' linears run in FP8. The PiT blocks' per-pixel layers sum over a handful of channels (16 in
every official model), too few to average E4M3's 3-bit mantissa away: with them in FP8 the demo model's image falls
from 51.9 to 41.5 dB PSNR against bf16, as far from it as a 4x4 box blur (bench/tolerances.py), for about 13% of a
step's FLOPs.
"""

from __future__ import annotations

import re

import torch
from torch import nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448
FP8_LAYER = re.compile(r"^patch_blocks\.\d+\.(attn\.(qkv|proj)_[xy]|mlp_[xy]\.w[123])$")


def fp8_layers(model: nn.Module) -> list[str]:
    """The names of the linears that run in FP8: qkv, proj and the SwiGLU of both streams of every MM-DiT block,
    except the last block's text outputs (never computed), whose sizes FP8 kernels take (multiples of 16)."""
    last = f"patch_blocks.{model.cfg.patch_depth - 1}."
    unused = (last + "attn.proj_y", last + "mlp_y.")
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and FP8_LAYER.match(name) and not name.startswith(unused)
            and m.in_features % 16 == 0 and m.out_features % 16 == 0]
