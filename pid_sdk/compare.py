"""Parity comparators: error statistics of a backend against the PyTorch reference, per step and per image.

A `Comparison` says whether it passed its precision's tolerance and what tolerance would have been needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor


@dataclass(frozen=True)
class Tolerance:
    """Bounds on the error relative to the reference's range, scale = max(1, peak |reference|) (images: 1)."""

    max_abs: float | None = None
    mean_abs: float | None = None
    min_cosine: float | None = None
    min_psnr: float | None = None  # dB: 20 log10(2 scale / rmse)


@dataclass(frozen=True)
class Row:
    """One precision's bounds: on each step's velocity (on the reference trajectory) and on the final image."""

    step: Tolerance
    image: Tolerance


# One table for every backend, each bound derived from a measured spread by bench/tolerances.py (the worst real
# result of the row's precision over tiny presets of every latent space and the demo model, times a margin, never
# more than halfway to the least wrong image; docs/results/2026-12-06-cpu-tolerances.json, docs/parity.md) and
# checked by negative controls: the demo decode with another seed and a box blur of it (2x2; 4x4 for fp8) fail the
# image bounds of every row (tests/test_tolerances.py). bf16 and fp8 also hold GPU kernels (autocast, TensorRT
# plans, FP8 attention) the CPU cannot measure: their rows keep the CPU-derived bounds until a GPU run measures them.
TOLERANCES: dict[str, Row] = {
    "fp32": Row(step=Tolerance(max_abs=0.00026, mean_abs=1.1e-05, min_cosine=0.9999999997, min_psnr=102.7),
                image=Tolerance(max_abs=0.00056, mean_abs=1.4e-05, min_cosine=0.99999999986, min_psnr=98.1)),
    "fp16": Row(step=Tolerance(max_abs=0.021, mean_abs=0.00052, min_cosine=0.9999987, min_psnr=69.2),
                image=Tolerance(max_abs=0.023, mean_abs=0.00084, min_cosine=0.9999973, min_psnr=63.3)),
    "bf16": Row(step=Tolerance(max_abs=0.093, mean_abs=0.0053, min_cosine=0.99989, min_psnr=48.9),
                image=Tolerance(max_abs=0.19, mean_abs=0.0052, min_cosine=0.99989, min_psnr=48.3)),
    "bf16-twin": Row(step=Tolerance(max_abs=0.15, mean_abs=0.0029, min_cosine=0.999962, min_psnr=54.2),
                     image=Tolerance(max_abs=0.16, mean_abs=0.0044, min_cosine=0.999974, min_psnr=49.4)),
    "fp8": Row(step=Tolerance(max_abs=0.42, mean_abs=0.016, min_cosine=0.9986, min_psnr=39.5),
               image=Tolerance(max_abs=1.1, mean_abs=0.019, min_cosine=0.99957, min_psnr=34.9)),
}
BOUNDS = ("max_abs", "mean_abs", "min_cosine", "min_psnr")
KINDS = ("step", "image")


@dataclass
class Comparison:
    name: str
    precision: str
    max_abs: float
    mean_abs: float
    rel_l2: float
    cosine: float
    psnr: float  # 20 log10(2 scale / rmse): for images in [-1, 1] the usual PSNR
    scale: float = 1.0  # max(1, peak |reference|): velocities of random test models reach several units
    quantiles: dict[str, float] = field(default_factory=dict)  # of the absolute error
    kind: str = "image"  # step (a velocity) or image: which bounds of the row judge it

    @property
    def row(self) -> str:
        """The TOLERANCES row this comparison is judged by (fp8-fp32 by fp8)."""
        return self.precision if self.precision in TOLERANCES else self.precision.split("-")[0]

    @property
    def tolerance(self) -> Tolerance:
        return getattr(TOLERANCES[self.row], self.kind)

    @property
    def failures(self) -> list[str]:
        """The bounds of the row this result breaks (a non-finite result breaks them all; NaN never passes)."""
        if not math.isfinite(self.max_abs):
            return list(BOUNDS)
        t, need = self.tolerance, self.needed
        broken = {"max_abs": t.max_abs is not None and not need.max_abs <= t.max_abs,
                  "mean_abs": t.mean_abs is not None and not need.mean_abs <= t.mean_abs,
                  "min_cosine": t.min_cosine is not None and not need.min_cosine >= t.min_cosine,
                  "min_psnr": t.min_psnr is not None and not need.min_psnr >= t.min_psnr}
        return [b for b in BOUNDS if broken[b]]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def needed(self) -> Tolerance:
        """The tightest tolerance this result would have passed."""
        return Tolerance(max_abs=self.max_abs / self.scale, mean_abs=self.mean_abs / self.scale,
                         min_cosine=self.cosine, min_psnr=self.psnr)

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else f"FAIL ({', '.join(self.failures)})"
        q = " ".join(f"p{k}={v:.1e}" for k, v in self.quantiles.items())
        return (f"{verdict} {self.name:<14} {self.precision:<5} max {self.max_abs:.2e} mean {self.mean_abs:.2e} "
                f"rel {self.rel_l2:.2e} cos {self.cosine:.7f} psnr {self.psnr:.1f} dB scale {self.scale:.1f}  {q}")


def compare(name: str, out: Tensor, ref: Tensor, precision: str = "fp32", kind: str = "image") -> Comparison:
    a, b = out.detach().double().flatten().cpu(), ref.detach().double().flatten().cpu()
    err = (a - b).abs()
    rmse = err.pow(2).mean().sqrt().item()
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    sample = err[:: max(1, err.numel() // 1_000_000)]  # torch.quantile refuses inputs above 16M elements
    qs = torch.quantile(sample, torch.tensor([0.5, 0.9, 0.99, 0.999], dtype=err.dtype))
    scale = max(1.0, b.abs().max().item())
    psnr = math.inf if rmse == 0 else 20 * math.log10(2 * scale / rmse) if math.isfinite(rmse) else -math.inf
    return Comparison(
        name, precision, err.max().item(), err.mean().item(), (err.norm() / b.norm().clamp_min(1e-30)).item(), cosine,
        psnr, scale,
        {k: v for k, v in zip(("50", "90", "99", "99.9"), qs.tolist())}, kind,
    )


def box_blur(image: Tensor, k: int) -> Tensor:
    """A k x k box blur of [B, C, H, W] at its own size (edges replicated): one of the wrong answers every row of
    the table must refuse (2x2; 4x4 for fp8), with the decode of another seed."""
    pad = (k // 2, (k - 1) // 2, k // 2, (k - 1) // 2)
    return torch.nn.functional.avg_pool2d(torch.nn.functional.pad(image, pad, mode="replicate"), k, stride=1)


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
        per_step.append(compare(f"step {len(per_step) + 1} v", v, v_ref, precision, kind="step"))
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
    prepared = dict(text=text, latent=z, latent_sigma=torch.zeros(z.shape[0]), height=h, width=w)
    windows = decoder._windows(kwargs.get("window"), kwargs.get("overlap"), h, w, h // z.shape[-2])
    step = decoder._step(windows, kwargs.get("blend", "linear"), kwargs.get("windows_per_call", 1), **prepared)
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
                   seed: int = 0, providers=None, device_info=None, verify: bool = True,
                   latent: Tensor | None = None, windowed: list[str] | None = None, log=None) -> list[EntryResult]:
    """Each entry of the backend on its own graph against the PyTorch reference from the folder's weights (fp32),
    on the same seeded latent per size (or `latent`, model form [B, C, h, w], for the entries of its size). Entries
    this machine cannot run are skipped with the reason; a bf16 graph on a provider without bf16 kernels runs as
    its fp32 twin and is judged and reported as such. `log` (a function of one line) hears the entries to come,
    then each result as it is known, with its time. `windowed` ("HxW" outputs) adds, per entry, the decode of each
    of those sizes as windows of the entry's bucket (docs/guide.md, "Large images"), against the PyTorch windowed
    decode with the same windows."""
    import time
    from pathlib import Path

    from pid_sdk.buckets import Bucket
    from pid_sdk.decoder import Decoder
    from pid_sdk.errors import InputError, counted
    from pid_sdk.flops import matmul_rate
    from pid_sdk.inputs import MAX_COMPARE_STEPS, check_flag, check_int
    from pid_sdk.latents import get_latent_space
    from pid_sdk.runtime.manifest import read_engine_manifest
    from pid_sdk.runtime.open_folder import torch_runtime
    from pid_sdk.runtime.selection import ENTRY_KINDS, DeviceInfo

    check_int("steps", steps, 1, MAX_COMPARE_STEPS, "4 (default), or 1, 2, 3, ...")
    folder = Path(folder)
    manifest = read_engine_manifest(folder, verify=check_flag("verify", verify))
    entries = [e for e in manifest.entries if e.backend in ENTRY_KINDS.get(backend, ())
               and (not sizes or f"{e.bucket[0]}x{e.bucket[1]}" in sizes)]
    if not entries:
        raise InputError("Nothing to compare.", received=sizes or "all sizes",
                         expected=f"{backend} entries in {folder}", fix="pid-sdk export / pid-sdk build first")
    log = log or (lambda line: None)
    sizes_run = [f"{h}x{w}" for h, w in sorted({e.bucket for e in entries})]
    log(f"comparing {counted(len(entries), backend + ' entry')}, {counted(steps, 'step')} each, at "
        f"{', '.join(sizes_run)}" + ("" if sizes else " (every size of the folder: --size HxW picks one)"))
    reference = Decoder(manifest.config, torch_runtime(folder, manifest, verify, precision="fp32"), source=str(folder))
    space = get_latent_space(reference.latent_space)
    outputs = [Bucket.parse(size) for size in windowed or []]
    for output in outputs:
        output.latent_size(space.factor, manifest.config.adapter.sr_scale)  # whole latent cells, or the fix
    run = _FolderRun(folder, manifest, backend, device_info or DeviceInfo.detect(), providers, verify, reference,
                     space, latent, steps, seed, outputs)
    if note := duration_note(manifest.config, entries, steps, matmul_rate()):  # before the first long entry
        log(note)
    results = []
    for e in entries:
        started = time.monotonic()
        for result in _compare_entry(e, run):
            results.append(result)
            log(f"{result}\n   ({time.monotonic() - started:.1f} s)")
            started = time.monotonic()
    return results


def duration_note(cfg, entries, steps: int, rate: float) -> str:
    """Where a compare is long at `rate` FLOP/s: how long at least. Each entry runs the denoiser 4 x `steps` times
    (both decoders per step, then both whole decodes)."""
    from pid_sdk.flops import decode_flops, time_floor

    floor = time_floor(sum(4 * steps * decode_flops(cfg, *e.bucket, steps=steps, batch=e.batch).per_step
                           for e in entries), rate)
    return f"this takes {floor}: --size HxW compares one size" if floor else ""


@dataclass(frozen=True)
class _FolderRun:
    """What every entry of one compare_folder call shares."""

    folder: object  # Path
    manifest: object
    backend: str
    device: object  # DeviceInfo
    providers: object
    verify: bool
    reference: object  # the PyTorch fp32 Decoder
    space: object  # LatentSpace
    latent: Tensor | None
    steps: int
    seed: int
    windowed: list  # Bucket outputs decoded as windows of each entry's bucket


def _compare_entry(e, run: _FolderRun) -> Iterator[EntryResult]:
    """One entry: skipped where this machine cannot run it, failed where its files are damaged, else its parity
    (and its windowed parities), each as it is known."""
    from pid_sdk.decoder import Decoder
    from pid_sdk.errors import CheckpointError, ConfigError
    from pid_sdk.runtime.open_folder import EngineRuntime, skip_reason
    from pid_sdk.runtime.selection import entry_runs

    if run.backend != "onnxruntime":  # ONNX Runtime runs any graph: a bf16 one as its fp32 twin
        ok, why = entry_runs(e, run.device)
        if not ok:
            yield EntryResult(e.key, "skipped", reason=why)
            return
    runtime = EngineRuntime(run.folder, run.manifest, run.backend, run.device, run.providers, entry=e,
                            verify=run.verify, upcast=True)
    try:
        opened = runtime.open_entry(*e.bucket, e.batch)
    except CheckpointError as exc:
        yield EntryResult(e.key, "failed", reason=skip_reason(exc) + f"; fix: {exc.fix}")
        return
    except ConfigError as exc:
        yield EntryResult(e.key, "skipped", reason=skip_reason(exc))
        return
    candidate = Decoder(run.manifest.config, runtime)
    judged = judged_precision(e, getattr(opened, "upcast", False))
    for output in [None, *run.windowed]:
        h, w = (output.height, output.width) if output else e.bucket
        window = {"window": e.bucket} if output else {}
        report = run_parity(run.reference, candidate, _latent_for(run, e, h, w), precision=judged, steps=run.steps,
                            seed=run.seed, **window)
        name = e.key + (f", {h}x{w} as its windows" if output else "")
        yield EntryResult(name, "passed" if report.passed else "failed", opened.ran, report)


def _latent_for(run: _FolderRun, e, height: int, width: int) -> Tensor:
    """`run.latent` where it has the entry's shape, else the seeded latent of an output of height x width."""
    space = run.space
    lh, lw = (s // (space.factor * run.reference.config.adapter.sr_scale) for s in (height, width))
    if run.latent is not None and tuple(run.latent.shape) == (e.batch, space.channels, lh, lw):
        return run.latent
    return torch.randn(e.batch, space.channels, lh, lw, generator=torch.Generator().manual_seed(run.seed))
