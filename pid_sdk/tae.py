"""Tiny autoencoders (TAESD family) to turn real images into real latents and to decode a cheap baseline.

Weights are the MIT-licensed files in `shared/data/tae/`; keys are bare `nn.Sequential` indices. `encode` returns the
latent in the diffusion model's space, already normalised (FLUX.1: (z_vae - 0.1159) * 0.3611): the form an LDM
delivers and PiD decodes with `normalized=True`. Do not normalise it again.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from pid_sdk.config import SHARED_TAE_DIR  # noqa: F401  (where callers have always found it)
from pid_sdk.errors import CheckpointError

# Where the tiny autoencoders sit in a development checkout: ../shared/data/tae beside the repository (a user's clone
# has none; every tool that needs them takes --tae-dir, every test that needs them skips without them).


def _conv(a: int, b: int, **kw) -> nn.Conv2d:
    return nn.Conv2d(a, b, 3, padding=1, **kw)


class Block(nn.Module):
    def __init__(self, a: int, b: int, pool: bool = False):
        super().__init__()
        self.conv = nn.Sequential(_conv(a, b), nn.ReLU(), _conv(b, b), nn.ReLU(), _conv(b, b))
        self.skip = nn.Conv2d(a, b, 1, bias=False) if a != b else nn.Identity()
        if pool:  # FLUX.2 (taef2) lowest-resolution blocks mix in a pooled context first
            self.pool = nn.Sequential(nn.Conv2d(a, 4 * a, 1, bias=False), nn.GroupNorm(4, 4 * a), nn.ReLU(),
                                      nn.Conv2d(4 * a, a, 1, bias=False))
        self.has_pool = pool

    def forward(self, x: Tensor) -> Tensor:
        if self.has_pool:
            x = x + self.pool(x)
        return torch.relu(self.conv(x) + self.skip(x))


class Clamp(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


def encoder(channels: int, pool: bool = False) -> nn.Sequential:
    def stage() -> list[nn.Module]:
        return [_conv(64, 64, stride=2, bias=False), Block(64, 64), Block(64, 64), Block(64, 64)]

    last = [_conv(64, 64, stride=2, bias=False)] + [Block(64, 64, pool) for _ in range(3)]
    return nn.Sequential(_conv(3, 64), Block(64, 64), *stage(), *stage(), *last, _conv(64, channels))


def decoder(channels: int, pool: bool = False) -> nn.Sequential:
    def stage(n: int) -> list[nn.Module]:
        return [*(Block(64, 64) for _ in range(n)), nn.Upsample(scale_factor=2), _conv(64, 64, bias=False)]

    first = [Block(64, 64, pool) for _ in range(3)] + [nn.Upsample(scale_factor=2), _conv(64, 64, bias=False)]
    return nn.Sequential(Clamp(), _conv(channels, 64), nn.ReLU(), *first, *stage(3), *stage(3), Block(64, 64),
                         _conv(64, 3))


def _load(module: nn.Sequential, path: Path) -> nn.Sequential:
    from safetensors.torch import load_file

    if not path.exists():
        raise CheckpointError(f"No tiny autoencoder at {path}.", fix="point to shared/data/tae/")
    module.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()}, strict=True)
    return module.eval()


class TinyAutoencoder:
    """`encode(rgb in [0,1]) -> normalised latent`, `decode(latent) -> rgb in [0,1]`."""

    CHANNELS = {"taef1": 16, "taesd3": 16, "taesdxl": 4, "taesd": 4, "taef2": 32}

    def __init__(self, folder: str | Path, name: str):
        folder = Path(folder)
        c, pool = self.CHANNELS[name], name == "taef2"
        self.encoder = _load(encoder(c, pool), folder / f"{name}_encoder.safetensors")
        self.decoder = _load(decoder(c, pool), folder / f"{name}_decoder.safetensors")

    def to(self, device: str | torch.device) -> "TinyAutoencoder":
        """Both halves on `device` (inputs must be there too); returns self."""
        self.encoder.to(device)
        self.decoder.to(device)
        return self

    @torch.no_grad()
    def encode(self, rgb: Tensor) -> Tensor:
        return self.encoder(rgb)

    @torch.no_grad()
    def decode(self, latent: Tensor) -> Tensor:
        return self.decoder(latent).clamp(0, 1)
