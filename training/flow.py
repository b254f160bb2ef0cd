"""Rectified flow in the spec's convention: x_sigma = (1 - sigma) x0 + sigma eps, the network predicts v = eps - x0."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pid_sdk.sampling import shift_sigma


def sample_sigma(batch: int, *, shift: float = 1.0, mean: float = 0.0, std: float = 1.0,
                 generator: torch.Generator | None = None, device="cpu") -> Tensor:
    """Logit-normal noise levels, then the timestep shift (spec 6.1 training)."""
    u = torch.randn(batch, generator=generator, device=device) * std + mean
    return shift_sigma(torch.sigmoid(u), shift)


def sample_latent_sigma(batch: int, sigma_max: float = 0.8, prob: float = 0.5, *,
                        generator: torch.Generator | None = None, device="cpu") -> Tensor:
    """Noisy latent conditioning: sigma_latent ~ U[0, sigma_max] for a `prob` share of the samples, else 0."""
    sigma = torch.rand(batch, generator=generator, device=device) * sigma_max
    return sigma * (torch.rand(batch, generator=generator, device=device) < prob).float()


def add_noise(x0: Tensor, sigma: Tensor, eps: Tensor) -> Tensor:
    s = sigma.view(-1, *([1] * (x0.ndim - 1)))
    return (1 - s) * x0 + s * eps


def velocity_target(x0: Tensor, eps: Tensor) -> Tensor:
    return eps - x0


def x0_from_v(x: Tensor, sigma: Tensor, v: Tensor) -> Tensor:
    return x - sigma.view(-1, *([1] * (x.ndim - 1))) * v


def pooled_mse(err: Tensor, pooled: tuple[tuple[int, float], ...] = ()) -> Tensor:
    """Mean squared error plus, for each (pool, weight), `weight` times that of the error average-pooled by `pool`.

    Pooling averages away the unpredictable fine-scale error, so these terms weigh the coarse structure that the
    latent does determine; with none it is the plain MSE.
    """
    loss = err.pow(2).mean()
    for pool, weight in pooled:
        loss = loss + weight * F.avg_pool2d(err, pool).pow(2).mean()
    return loss


def gradient_mse(err: Tensor) -> Tensor:
    """Mean squared step of the error between horizontal neighbours plus that between vertical ones.

    Zero for an error that is constant over the image; it weighs the error's edges, such as a step across a patch
    seam that the photograph does not have, more than the plain MSE does.
    """
    dx = err[..., :, 1:] - err[..., :, :-1]
    dy = err[..., 1:, :] - err[..., :-1, :]
    return dx.pow(2).mean() + dy.pow(2).mean()
