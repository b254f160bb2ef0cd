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


# One table for every backend. fp32 and the bf16 twin are derived from the measured spread (bench/tolerances.py:
# 8 tiny presets x 3 seeds x 1 and 4 steps, ONNX Runtime CPU against PyTorch, the worst case times 4, rounded up;
# docs/results/2026-12-04-cpu-tolerances.json). Reduced precisions are judged on the mean error and direction,
# since a few outliers are expected where bf16 / fp8 round differently; their rows also hold GPU kernels that this
# CPU measurement cannot speak for, so they stay at the looser values their GPU runs need.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs=5e-4, mean_abs=2e-5, min_cosine=0.9999999996),
    "fp16": Tolerance(mean_abs=5e-3, min_cosine=0.9999),
    "bf16": Tolerance(mean_abs=2e-2, min_cosine=0.999),
    "bf16-twin": Tolerance(mean_abs=9e-3, min_cosine=0.99992),  # bf16 weights in fp32 arithmetic (upcast.py)
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
        return TOLERANCES.get(self.precision) or TOLERANCES[self.precision.split("-")[0]]  # fp8-fp32 as fp8

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


@dataclass
class EntryResult:
    """One entry of an engine folder: what ran (backend, provider, precision, files) and its parity, or why it was
    skipped (this machine cannot run it) or failed without running (a damaged or unverifiable file)."""

    entry: str
    status: str  # passed, failed, skipped
    ran: dict | None = None
    report: ParityReport | None = None
    reason: str = ""

    def __str__(self) -> str:
        lines = [f"== {self.entry}: {self.status.upper()}"]
        if self.ran:
            r = self.ran
            lines.append(f"   ran: {r['backend']} on {r['provider']}, precision {r['precision']}, "
                         f"files {', '.join(r['files'])}")
        if self.reason:
            lines.append(f"   {'skipped' if self.status == 'skipped' else 'error'}: {self.reason}")
        if self.report:
            lines.append(str(self.report))
        return "\n".join(lines)


def judged_precision(entry, upcast: bool = False) -> str:
    """The TOLERANCES row an entry is held to: a bf16 graph run as its fp32 twin has its own row; an fp32 graph
    with fp16 attention is held to fp16."""
    if upcast:
        return f"{entry.precision}-twin"
    if entry.precision == "fp32" and entry.attention_dtype:
        return entry.attention_dtype
    return entry.precision


def summary(results: list[EntryResult]) -> str:
    count = {s: sum(r.status == s for r in results) for s in ("passed", "failed", "skipped")}
    return f"{count['passed']} passed, {count['failed']} failed, {count['skipped']} skipped"


def compare_folder(folder, backend: str = "onnxruntime", *, sizes: list[str] | None = None, steps: int = 4,
                   seed: int = 0, providers=None, device_info=None, verify: bool = True) -> list[EntryResult]:
    """Each entry of the backend on its own graph against the PyTorch reference from the folder's weights (fp32),
    on the same seeded latent per size. Entries this machine cannot run are skipped with the reason; a bf16 graph
    on a provider without bf16 kernels runs as its fp32 twin and is judged and reported as such."""
    from pathlib import Path

    from pid_sdk.decoder import Decoder
    from pid_sdk.errors import CheckpointError, ConfigError, InputError
    from pid_sdk.latents import get_latent_space
    from pid_sdk.runtime.engine_set import EngineRuntime, skip_reason, torch_runtime
    from pid_sdk.runtime.manifest import read_manifest
    from pid_sdk.runtime.selection import ENTRY_KINDS, DeviceInfo, entry_runs

    folder = Path(folder)
    manifest = read_manifest(folder)
    entries = [e for e in manifest.entries if e.backend in ENTRY_KINDS.get(backend, ())
               and (not sizes or f"{e.bucket[0]}x{e.bucket[1]}" in sizes)]
    if not entries:
        raise InputError("Nothing to compare.", received=sizes or "all sizes",
                         expected=f"{backend} entries in {folder}", fix="pid-sdk export / pid-sdk build first")
    device = device_info or DeviceInfo.detect()
    reference = Decoder(manifest.config, torch_runtime(folder, manifest, verify, precision="fp32"), source=str(folder))
    space = get_latent_space(reference.latent_space)
    results = []
    for e in entries:
        ok, why = entry_runs(e, device) if backend != "onnxruntime" else (True, "")
        if not ok:
            results.append(EntryResult(e.key, "skipped", reason=why))
            continue
        runtime = EngineRuntime(folder, manifest, backend, device, providers, entry=e, verify=verify, upcast=True)
        try:
            opened = runtime.open_entry(*e.bucket, e.batch)
        except CheckpointError as exc:
            results.append(EntryResult(e.key, "failed", reason=skip_reason(exc) + f"; fix: {exc.fix}"))
            continue
        except ConfigError as exc:
            results.append(EntryResult(e.key, "skipped", reason=skip_reason(exc)))
            continue
        lh, lw = (s // (space.factor * reference.config.adapter.sr_scale) for s in e.bucket)
        latent = torch.randn(e.batch, space.channels, lh, lw, generator=torch.Generator().manual_seed(seed))
        candidate = Decoder(manifest.config, runtime, source=str(folder))
        judged = judged_precision(e, getattr(opened, "upcast", False))
        report = run_parity(reference, candidate, latent, precision=judged, steps=steps, seed=seed)
        results.append(EntryResult(e.key, "passed" if report.passed else "failed", opened.ran, report))
    return results
