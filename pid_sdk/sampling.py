"""Samplers as pure functions over any `model_fn(x, sigma) -> v`, so every backend runs the same loop.

Convention: sigma is the noise level (0 clean, 1 noise), x_sigma = (1 - sigma) x0 + sigma eps, v = eps - x0.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable

import torch
from torch import Tensor

ModelFn = Callable[[Tensor, float], Tensor]
STUDENT_SIGMAS = (0.999, 0.866, 0.634, 0.342, 0.0)


def student_sigmas(steps: int) -> list[float]:
    """Sigma list of the distilled student for `steps` network calls (spec 6.3, 7.1, 7.3)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps == 1:
        return [1.0, 0.0]
    # round(linspace(0, 4, steps + 1)), half to even, in exact arithmetic: a float linspace puts some halves one ulp
    # off (392 steps: index 49 is 0.49999999999999994 in float64) and rounds them the other way
    return [STUDENT_SIGMAS[round(Fraction(4 * i, steps))] for i in range(steps + 1)]


Generators = torch.Generator | list[torch.Generator] | None


def noise(shape: tuple[int, ...], generator: Generators, device: torch.device | str) -> Tensor:
    """Standard normal noise. With one generator per batch item, each item draws exactly the noise it would draw
    decoded alone with the same seed."""
    if isinstance(generator, list):
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=device) for g in generator])
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)


def sample_student(
    model_fn: ModelFn,
    shape: tuple[int, ...],
    *,
    steps: int = 4,
    mode: str = "sde",
    generator: Generators = None,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, int], None] | None = None,
) -> Tensor:
    """The 4-step student: x0 = x - sigma v in float64; re-noise with fresh eps (sde) or step along v (ode)."""
    sigmas = student_sigmas(steps)
    x = noise(shape, generator, device)
    for i, (cur, nxt) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        v = model_fn(x, cur).float()
        x0 = denoised(x, v, cur)
        if nxt <= 0:
            x = x0
        elif mode == "sde":
            x = (1 - nxt) * x0 + nxt * noise(x0.shape, generator, device)
        else:
            x = x + (nxt - cur) * v
        if on_step:
            on_step(i + 1, len(sigmas) - 1)
    return x.clamp(-1, 1)


X0_BLOCK = 1 << 22  # values of x0 formed in float64 at once (3 float64 temporaries of this many: 96 MiB)


def denoised(x: Tensor, v: Tensor, sigma: float, block: int = X0_BLOCK) -> Tensor:
    """x - sigma v computed in float64 and rounded to float32, a block of about `block` values of rows at a time:
    the float64 copies of a whole 8192x8192 image would take 1.6 GB each (the same values either way)."""
    out = torch.empty_like(x)
    rows = max(1, block // max(1, x[..., :1, :].numel()))  # [..., H, W]: rows of every item and channel at once
    for top in range(0, x.shape[-2], rows):
        out[..., top:top + rows, :] = x[..., top:top + rows, :].double() - sigma * v[..., top:top + rows, :].double()
    return out


def shift_sigma(sigma: Tensor, shift: float) -> Tensor:
    return shift * sigma / (1 + (shift - 1) * sigma)


def dynamic_shift(height: int, width: int, base_shift: float = 6.0, base_size: int = 2048) -> float:
    """Resolution-dependent shift of the v1.5 teacher: base_shift * sqrt(sqrt(H*W) / base_size)."""
    return base_shift * math.sqrt(math.sqrt(height * width) / base_size)


def teacher_sigmas(steps: int, shift: float) -> list[float]:
    """time_uniform_flow schedule: N+1 sigmas from shift(0.999) down to 0."""
    s = 1 - torch.linspace(1, 0.001, steps + 1, dtype=torch.float64)
    return shift_sigma(s, shift).flip(0).tolist()


def _lambda(sigma: float) -> float:
    return math.log((1 - sigma) / sigma)


def sample_teacher(
    model_fn: ModelFn,
    shape: tuple[int, ...],
    *,
    steps: int = 50,
    shift: float = 4.0,
    guidance: float = 1.0,
    uncond_fn: ModelFn | None = None,
    interval: tuple[float, float] = (0.0, 1.0),
    generator: Generators = None,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, int], None] | None = None,
) -> Tensor:
    """DPM-Solver++ 2M (data prediction, flow model type) with text-only classifier-free guidance on eps."""
    sigmas = teacher_sigmas(steps, shift)
    x = noise(shape, generator, device)
    prev: tuple[float, Tensor] | None = None
    for i, (cur, nxt) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        x0 = _data_prediction(model_fn, uncond_fn, x, cur, guidance, interval)
        if nxt <= 0:  # last step is first order to sigma 0: the current x0 prediction
            x = x0
        else:
            x = _dpmpp_update(x, cur, nxt, x0, prev)
        prev = (cur, x0)
        if on_step:
            on_step(i + 1, len(sigmas) - 1)
    return x.clamp(-1, 1)


def _data_prediction(model_fn, uncond_fn, x: Tensor, sigma: float, guidance: float, interval) -> Tensor:
    eps = x + (1 - sigma) * model_fn(x, sigma).float()
    if uncond_fn is not None and guidance != 1.0 and interval[0] < sigma < interval[1]:
        eps_u = x + (1 - sigma) * uncond_fn(x, sigma).float()
        eps = eps_u + guidance * (eps - eps_u)
    return (x - sigma * eps) / (1 - sigma)


def _dpmpp_update(x: Tensor, cur: float, nxt: float, x0: Tensor, prev: tuple[float, Tensor] | None) -> Tensor:
    h = _lambda(nxt) - _lambda(cur)
    alpha_t, phi = 1 - nxt, math.expm1(-h)
    first_order = (nxt / cur) * x - alpha_t * phi * x0
    if prev is None:
        return first_order
    r = (_lambda(cur) - _lambda(prev[0])) / h
    d1 = (x0 - prev[1]) / r
    return first_order - 0.5 * alpha_t * phi * d1

