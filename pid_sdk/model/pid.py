"""The PiD network: the PixelDiT backbone plus the latent adapter injected through sigma-aware gates."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pid_sdk.config import PiDConfig
from pid_sdk.model.adapter import LatentAdapter, LatentFeatures, LatentGate
from pid_sdk.model.pixeldit import Geometry, PixelDiT


class PiD(PixelDiT):
    """`forward(x, sigma, text, latent, latent_sigma)` returns v = eps - x0 for the image x at noise level sigma."""

    def __init__(self, cfg: PiDConfig):
        super().__init__(cfg.backbone)
        self.config = cfg
        self.interval = cfg.adapter.interval
        self.lq_proj = LatentAdapter(cfg.adapter, cfg.backbone.hidden_size, cfg.backbone.patch_size, cfg.num_gates)
        if cfg.adapter.pit_inject:
            width = cfg.backbone.hidden_size if cfg.adapter.gate == "per_token_per_dim" else 1
            self.pit_lq_gate = LatentGate(cfg.backbone.hidden_size, width)

    def encode_latent(self, latent: Tensor, latent_sigma: Tensor, geo: Geometry) -> LatentFeatures:
        """Once per decode: the injection tokens and the step-independent part of every gate."""
        heads, pit = self.lq_proj(latent, geo.grid)
        gates = list(self.lq_proj.gate_modules)
        if pit is not None:
            heads, gates = heads + [pit], gates + [self.pit_lq_gate]
        sigma = latent_sigma.float().expand(latent.shape[0])
        return LatentFeatures(heads, [g.offset(h, sigma) for g, h in zip(gates, heads)])

    def inject_patch(self, index: int, s: Tensor, latent: LatentFeatures | None) -> Tensor:
        if latent is None or index % self.interval:
            return s
        k = index // self.interval
        return self.lq_proj.gate_modules[k](s, latent.tokens[k], latent.offsets[k])

    def inject_pixel(self, s: Tensor, latent: LatentFeatures | None) -> Tensor:
        if latent is None or not hasattr(self, "pit_lq_gate"):
            return s
        return self.pit_lq_gate(s, latent.tokens[-1], latent.offsets[-1])

    def forward(self, x: Tensor, sigma: Tensor, text: Tensor, latent: Tensor, latent_sigma: Tensor) -> Tensor:
        geo = self.geometry(x.shape[-2], x.shape[-1], min(text.shape[1], self.cfg.txt_max_length), x.device)
        feats = self.encode_latent(latent, torch.as_tensor(latent_sigma, device=x.device), geo)
        return self.denoise(x, sigma, self.embed_text(text), geo, feats)

    def init_weights(self) -> None:
        """The training initialisation of the PiD-specific parts (zero heads, gates near sigmoid(2 - 5 sigma))."""
        self.lq_proj.init_weights()
        if hasattr(self, "pit_lq_gate"):
            self.pit_lq_gate.init_weights()


def build_model(cfg: PiDConfig) -> nn.Module:
    """The bare backbone when the config has no adapter, else the PiD network."""
    if cfg.adapter is None:
        model = PixelDiT(cfg.backbone)
        model.config = cfg
        return model
    return PiD(cfg)


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Seeded random weights in which every path is active (no zero-initialised heads), for tests and demos."""
    gen = torch.Generator().manual_seed(seed)

    def sample(name: str, shape: torch.Size) -> Tensor:
        noise = torch.randn(shape, generator=gen, device="cpu")  # CPU stream: same weights on every device
        if name.endswith("log_alpha"):
            return torch.full(shape, torch.log(torch.tensor(5.0)).item())
        if "norm" in name:  # RMSNorm and GroupNorm scales and shifts
            return (1.0 if name.endswith("weight") else 0.0) + 0.1 * noise
        if len(shape) < 2 or name == "y_pos_embedding":
            return 0.02 * noise
        return noise / shape[1:].numel() ** 0.5  # fan-in scaling keeps activations O(1)

    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(sample(name, p.shape))
    return model
