"""Latent spaces PiD decodes (spec section 5.3): shape, normalisation from raw VAE latents, noise form."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from pid_sdk.errors import InputError

# Wan2.1 VAE per-channel statistics used by Qwen-Image (diffusers AutoencoderKLQwenImage config).
QWEN_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
             0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
QWEN_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
            3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclass(frozen=True)
class LatentSpace:
    """A latent space as the LDM delivers it (already normalised), with the rule to get there from raw VAE output.

    `noise_form` says how a partially denoised capture mixes signal and noise: "flow" is (1-s)x0 + s*eps,
    "vp" (SDXL) is sqrt(1-s^2)x0 + s*eps, and SDXL captures arrive in the Euler frame x0 + s_eu*eps.
    """

    name: str
    channels: int
    factor: int  # image pixels per latent cell
    noise_form: str = "flow"
    scale: tuple[float, ...] | float = 1.0
    shift: tuple[float, ...] | float = 0.0
    stats: str = "affine"  # how raw latents are normalised: affine, batchnorm, per_position, layernorm
    aliases: tuple[str, ...] = ()
    description: str = ""
    vae_form: tuple[int, int] | None = field(default=None)  # (channels, factor) of an also-accepted unpatchified form

    def output_size(self, height: int, width: int, sr_scale: int) -> tuple[int, int]:
        return height * self.factor * sr_scale, width * self.factor * sr_scale

    def to_model_form(self, latent: Tensor) -> Tensor:
        """Accept the unpatchified VAE-resolution form where one exists (FLUX.2: 32ch /8 -> 128ch /16)."""
        if self.vae_form is None or latent.shape[1] != self.vae_form[0]:
            return latent
        return F.pixel_unshuffle(latent, self.factor // self.vae_form[1])  # (c, pi, pj) channel order

    def normalize(self, raw: Tensor, stats: dict[str, Tensor] | None = None) -> Tensor:
        """Raw VAE / encoder output -> the normalised latent the LDM produces."""
        raw = self.to_model_form(raw.float())
        if self.stats == "affine":
            return (raw - _channel(self.shift, raw)) * _channel(self.scale, raw)
        if self.stats == "layernorm":
            return F.layer_norm(raw.movedim(1, -1), (raw.shape[1],), eps=1e-6).movedim(-1, 1)
        mean, var = self._require_stats(stats)
        if self.stats == "batchnorm":
            return (raw - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-4)
        return (raw - mean) / torch.sqrt(var + 1e-5)  # per (C, H, W) position

    def from_capture(self, latent: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """A capture at the LDM's own sigma -> (latent, sigma) in the frame PiD's gates were trained on."""
        if self.noise_form != "vp":
            return latent, sigma
        norm = torch.sqrt(sigma.double() ** 2 + 1).float()
        return latent / norm.view(-1, 1, 1, 1).to(latent.device), sigma / norm

    def add_noise(self, x0: Tensor, sigma: Tensor, eps: Tensor) -> Tensor:
        s = sigma.view(-1, 1, 1, 1)
        keep = torch.sqrt(1 - s**2) if self.noise_form == "vp" else 1 - s
        return keep * x0 + s * eps

    def _require_stats(self, stats: dict[str, Tensor] | None) -> tuple[Tensor, Tensor]:
        if not stats or "mean" not in stats or "var" not in stats:
            raise InputError(
                f"Normalising a raw {self.name} latent needs the encoder's statistics.",
                received=None if not stats else sorted(stats),
                expected="stats={'mean': tensor, 'var': tensor} from your VAE / encoder",
                fix="pass the statistics, or pass the latent as the LDM produces it (normalized=True)",
            )
        return stats["mean"].float(), stats["var"].float()


def _channel(value: tuple[float, ...] | float, like: Tensor) -> Tensor:
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return t.view(1, -1, 1, 1) if t.ndim else t


LATENT_SPACES: dict[str, LatentSpace] = {
    s.name: s
    for s in [
        LatentSpace("flux1", 16, 8, scale=0.3611, shift=0.1159, aliases=("zimage", "zimage-turbo"),
                    description="FLUX.1 / Z-Image VAE, 16 channels, /8"),
        LatentSpace("sd3", 16, 8, scale=1.5305, shift=0.0609, description="Stable Diffusion 3 VAE, 16 channels, /8"),
        LatentSpace("sdxl", 4, 8, noise_form="vp", scale=0.13025,
                    description="SDXL VAE, 4 channels, /8; captures in the Euler frame"),
        LatentSpace("flux2", 128, 16, stats="batchnorm", aliases=("flux2-klein-4b", "flux2-klein-9b"),
                    vae_form=(32, 8), description="FLUX.2 VAE, 2x2-patchified and BatchNorm-normalised: 128 ch, /16"),
        LatentSpace("qwenimage", 16, 8, scale=tuple(1 / s for s in QWEN_STD), shift=QWEN_MEAN,
                    aliases=("qwenimage-2512",), description="Qwen-Image (Wan2.1) VAE, 16 channels, /8"),
        LatentSpace("dinov2", 768, 16, stats="per_position", description="DINOv2-B (with registers) features, /16"),
        LatentSpace("siglip", 1152, 16, stats="layernorm", description="SigLIP-2 So400m features, /16 (8x decode)"),
    ]
}
_ALIASES = {alias: s.name for s in LATENT_SPACES.values() for alias in s.aliases}


def get_latent_space(name: str) -> LatentSpace:
    key = _ALIASES.get(name, name) if isinstance(name, str) else None
    if key not in LATENT_SPACES:
        known = sorted(LATENT_SPACES) + sorted(_ALIASES)
        raise InputError(
            f"Unknown latent space {name!r}.",
            received=name,
            expected=", ".join(known),
            fix="pass latent_space= one of the names above (the LDM that produced the latent)",
        )
    return LATENT_SPACES[key]

