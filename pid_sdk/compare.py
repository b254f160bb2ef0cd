"""Parity comparators: error statistics of a backend against the PyTorch reference, per step and per image.

A `Comparison` says whether it passed its precision's tolerance and what tolerance would have been needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class Tolerance:
    max_abs: float | None = None  # of the error divided by max(1, peak |reference|): plain max abs for images
    mean_abs: float | None = None
    min_cosine: float | None = None


# One table for every backend. fp32 graphs must match to float rounding; reduced precisions are judged on the
# mean error and direction, since a few outliers are expected where bf16 / fp8 round differently.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs=1e-4, mean_abs=1e-5, min_cosine=0.999999),
    "fp16": Tolerance(mean_abs=5e-3, min_cosine=0.9999),
    "bf16": Tolerance(mean_abs=2e-2, min_cosine=0.999),
    "fp8": Tolerance(mean_abs=6e-2, min_cosine=0.99),
}


@dataclass
class Comparison:
    name: str
    precision: str
    max_abs: float
    mean_abs: float
    rel_l2: float
    cosine: float
    psnr: float  # for images in [-1, 1]: 20 log10(2 / rmse)
    scale: float = 1.0  # max(1, peak |reference|): velocities of random test models reach several units
    quantiles: dict[str, float] = field(default_factory=dict)  # of the absolute error

    @property
    def tolerance(self) -> Tolerance:
        return TOLERANCES[self.precision.split("-")[0]]  # fp8-fp32 is judged as fp8

    @property
    def passed(self) -> bool:
        t = self.tolerance
        return ((t.max_abs is None or self.max_abs / self.scale <= t.max_abs)
                and (t.mean_abs is None or self.mean_abs / self.scale <= t.mean_abs)
                and (t.min_cosine is None or self.cosine >= t.min_cosine) and math.isfinite(self.max_abs))

    @property
    def needed(self) -> Tolerance:
        """The tightest tolerance this result would have passed."""
        return Tolerance(max_abs=self.max_abs / self.scale, mean_abs=self.mean_abs / self.scale, min_cosine=self.cosine)

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        q = " ".join(f"p{k}={v:.1e}" for k, v in self.quantiles.items())
        return (f"{verdict} {self.name:<14} {self.precision:<5} max {self.max_abs:.2e} mean {self.mean_abs:.2e} "
                f"rel {self.rel_l2:.2e} cos {self.cosine:.7f} psnr {self.psnr:.1f} dB scale {self.scale:.1f}  {q}")


def compare(name: str, out: Tensor, ref: Tensor, precision: str = "fp32") -> Comparison:
    a, b = out.detach().double().flatten().cpu(), ref.detach().double().flatten().cpu()
    err = (a - b).abs()
    rmse = err.pow(2).mean().sqrt().item()
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    sample = err[:: max(1, err.numel() // 1_000_000)]  # torch.quantile refuses inputs above 16M elements
    qs = torch.quantile(sample, torch.tensor([0.5, 0.9, 0.99, 0.999], dtype=err.dtype))
    return Comparison(
        name, precision, err.max().item(), err.mean().item(), (err.norm() / b.norm().clamp_min(1e-30)).item(), cosine,
        float("inf") if rmse == 0 else 20 * math.log10(2 / rmse), max(1.0, b.abs().max().item()),
        {k: v for k, v in zip(("50", "90", "99", "99.9"), qs.tolist())},
    )


@dataclass
class ParityReport:
    steps: list[Comparison]
    image: Comparison

    @property
    def passed(self) -> bool:
        return self.image.passed and all(c.passed for c in self.steps)

    def __str__(self) -> str:
        return "\n".join(str(c) for c in [*self.steps, self.image])


def run_parity(reference, candidate, latent: Tensor, *, precision: str, steps: int = 4, seed: int = 0,
               **decode_kwargs) -> ParityReport:
    """Both decoders on the same inputs: the candidate's velocity at every step of the reference trajectory, then
    the two final images of independent decodes with the same seed."""
    from pid_sdk.sampling import sample_student

    per_step: list[Comparison] = []
    ref_step = _step_fn(reference, latent, decode_kwargs)
    cand_step = _step_fn(candidate, latent, decode_kwargs)

    def model_fn(x: Tensor, sigma: float) -> Tensor:
        v_ref = ref_step({"x": x, "sigma": sigma})["v"]
        v = cand_step({"x": x, "sigma": sigma})["v"]
        per_step.append(compare(f"step {len(per_step) + 1} v", v, v_ref, precision))
        return v_ref

    shape = (latent.shape[0], 3, *reference.output_size(latent.shape[-2:], decode_kwargs.get("latent_space")))
    sample_student(model_fn, shape, steps=steps, generator=torch.Generator().manual_seed(seed))
    image = compare("image", candidate.decode(latent, seed=seed, steps=steps, **decode_kwargs),
                    reference.decode(latent, seed=seed, steps=steps, **decode_kwargs), precision)
    return ParityReport(per_step, image)


def _step_fn(decoder, latent: Tensor, kwargs: dict):
    from pid_sdk.latents import get_latent_space

    space = get_latent_space(kwargs.get("latent_space") or decoder.latent_space)
    z = space.to_model_form(latent.float())
    b = decoder.config.backbone
    h, w = decoder.output_size(latent.shape[-2:], space.name)
    text = torch.zeros(z.shape[0], b.txt_max_length, b.txt_embed_dim)
    step = decoder.runtime.backend(text=text, latent=z, latent_sigma=torch.zeros(z.shape[0]), height=h, width=w)
    return lambda feeds: {"v": step.infer({**feeds, "x": feeds["x"].to(decoder.device)})["v"].cpu()}
