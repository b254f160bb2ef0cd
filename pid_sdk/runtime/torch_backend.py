"""The PyTorch backend: the reference modules, with per-decode work done once and a per-step `infer`."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn


class TorchBackend:
    """`prepare` once per decode (geometry, text tokens, latent features), then `infer({x, sigma}) -> {v}`."""

    name = "pytorch"

    def __init__(self, model: nn.Module, device: torch.device, precision: str):
        self.model, self.device, self.precision = model, device, precision
        self._state: tuple | None = None

    def autocast(self):
        if self.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def prepare(self, *, text: Tensor, latent: Tensor | None, latent_sigma: Tensor, height: int,
                width: int) -> "TorchBackend":
        model = self.model
        text_len = min(text.shape[1], model.cfg.txt_max_length)
        geo = model.geometry(height, width, text_len, self.device)
        with self.autocast():
            tokens = model.embed_text(text.to(self.device))
            feats = None if latent is None else model.encode_latent(latent.to(self.device), latent_sigma.to(self.device), geo)
        self._state = (geo, tokens, feats)
        return self

    @torch.no_grad()
    def infer(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        if self._state is None:
            raise RuntimeError("TorchBackend.infer called before prepare()")
        geo, tokens, feats = self._state
        x = feeds["x"].to(self.device)
        sigma = torch.as_tensor(feeds["sigma"], dtype=torch.float32, device=self.device).reshape(-1)
        if tokens.shape[0] != x.shape[0]:  # guidance batches [cond, uncond] share the image
            raise ValueError("text batch and image batch differ")
        with self.autocast():
            v = self.model.denoise(x, sigma, tokens, geo, feats)
        return {"v": v.float()}


class TorchRuntime:
    """Any size, any batch: one TorchBackend per decode over the same model."""

    name = "pytorch"

    def __init__(self, model: nn.Module, device: torch.device, precision: str):
        self.model, self.device, self.precision = model, device, precision

    def backend(self, *, text: Tensor, latent: Tensor, latent_sigma: Tensor, height: int, width: int) -> TorchBackend:
        backend = TorchBackend(self.model, self.device, self.precision)  # one per decode: prepared state is its own
        return backend.prepare(text=text, latent=latent, latent_sigma=latent_sigma, height=height, width=width)
