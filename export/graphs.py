"""The three graphs of a decode, as modules whose `forward` argument names become the ONNX tensor names.

`text` and `adapter` run once per decode; `denoiser` runs every step. Everything that depends only on the bucket
(rotary tables, pixel position table) is a constant of the denoiser graph: one graph set per (bucket, batch).
Inputs and outputs are float32 whatever the compute precision, so every backend is fed the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pid_sdk.model.adapter import LatentFeatures


class TextGraph(nn.Module):
    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, text: Tensor) -> Tensor:
        return self.model.embed_text(text.to(self.dtype)).float()  # text_tokens [B, Lt, D]


class AdapterGraph(nn.Module):
    """latent, latent_sigma -> latent_tokens [B, G, L, D], gate_offsets [B, G, L, W] (G gates, +1 PiT in v1.5)."""

    def __init__(self, model: nn.Module, geo, dtype: torch.dtype):
        super().__init__()
        self.model, self.geo, self.dtype = model, geo, dtype

    def forward(self, latent: Tensor, latent_sigma: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.model.encode_latent(latent.to(self.dtype), latent_sigma, self.geo)
        return torch.stack(feats.tokens, 1).float(), torch.stack(feats.offsets, 1).float()


class DenoiserGraph(nn.Module):
    """x, sigma, text_tokens, latent_tokens, gate_offsets -> v (one sampler step)."""

    def __init__(self, model: nn.Module, geo, dtype: torch.dtype):
        super().__init__()
        self.model, self.geo, self.dtype = model, geo, dtype

    def forward(self, x: Tensor, sigma: Tensor, text_tokens: Tensor, latent_tokens: Tensor,
                gate_offsets: Tensor) -> Tensor:
        feats = LatentFeatures(list(latent_tokens.to(self.dtype).unbind(1)), list(gate_offsets.unbind(1)))
        v = self.model.denoise(x.to(self.dtype), sigma, text_tokens.to(self.dtype), self.geo, feats)
        return v.float()
