"""Decode latency, peak memory and achieved TFLOP/s of the PyTorch backend, per speed setting and image size.

    python bench/latency.py                  # pid-2k (1.36B, bf16, seeded random weights) on the GPU, all modes
    python bench/latency.py --tiny           # the same harness on the CPU at test size
    python bench/latency.py --modes fast --sizes 2048 --json out.json --markdown out.md

Modes: reference (the Decoder default: fp32 weights under bf16 autocast), eager (bf16 weights), compile
(bf16 + torch.compile), fast (bf16 + torch.compile + CUDA graphs), fast-cudnn (fast with the cuDNN attention kernel),
fp8 (fast with FP8 linear layers, compute capability 8.9+), fp8-torchao (torchao's float8 linears), fast-autotune
(max-autotune), fast-split / fast-cudnn-split (the MM-DiT attention as aligned text and image parts), fp8-attention
(fast-cudnn with the MM-DiT attention in cuDNN's FP8 SDPA) and fp8-all (that and torchao's float8 linears).

Each (mode, size) is timed over `--runs` decodes after warm-up with CUDA events, as a user calls `Decoder.decode`
(latent in host memory, image back to host memory, 4 steps, batch 1), and its image is compared with the same decode
in eager bf16 (`image_vs_bf16`, judged against the FP8 row of the parity table, `pid_sdk.compare.TOLERANCES`).
`--budget-s` skips what would not finish in time (a 4096x4096 decode in eager mode takes seconds); a mode that fails
is a row with its error, and the run goes on. `--windowed 8192:2048` adds an 8192x8192 decode as windows of 2048x2048
(pid_sdk/windows.py; the FLOPs are the windows', so TFLOP/s stays comparable) in every mode.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel_time import time_by_kind  # noqa: E402

from pid_sdk.checkpoints import LoadedModel  # noqa: E402
from pid_sdk.compare import compare  # noqa: E402
from pid_sdk.config import get_preset  # noqa: E402
from pid_sdk.decoder import Decoder  # noqa: E402
from pid_sdk.errors import PiDError  # noqa: E402
from pid_sdk.flops import decode_flops  # noqa: E402
from pid_sdk.latents import get_latent_space  # noqa: E402
from pid_sdk.model import build_model, randomize  # noqa: E402
from pid_sdk.runtime.attention import kernels_used  # noqa: E402
from pid_sdk.runtime.speed import FAST, SPEEDS, Speed  # noqa: E402
from pid_sdk.windows import default_overlap  # noqa: E402

MODES = {  # the library's named settings, and the variants measured beside them
    "reference": SPEEDS["reference"],
    "eager": SPEEDS["bf16"],
    "compile": replace(FAST, cuda_graphs=False),
    "fast": FAST,
    "fast-cudnn": replace(FAST, attention="cudnn"),
    "fp8": SPEEDS["fp8"],
    "fp8-torchao": SPEEDS["fp8-torchao"],
    "fast-autotune": SPEEDS["fast-autotune"],
    "fast-cudnn-split": replace(FAST, attention="cudnn", split_attention=True),
    "fast-split": replace(FAST, split_attention=True),
    "fp8-attention": SPEEDS["fp8-attention"],
    "fp8-all": replace(SPEEDS["fp8-attention"], weights="fp8-torchao"),
}
FAST_MODES = tuple(mode for mode, speed in MODES.items() if speed.cuda_graphs)  # the modes that run 4096² by default
PAPER = {1024: (88.4, 10.9), 2048: (446.0, 13.0), 4096: (3754.6, 22.5)}  # Table 3: H100, torch.compile; ms, GB
TARGET_MS = {1024: 50.0, 2048: 250.0, 4096: 3000.0}  # issue 32: H100 / H200, peak <= 8 GB at 2048
LARGE = 4096  # only the fast modes run at this size by default: eager would take a minute for its runs alone


def latent_for(dec: Decoder, side: int) -> torch.Tensor:
    space = get_latent_space(dec.latent_space)
    h = side // (space.factor * dec.config.adapter.sr_scale)
    return torch.randn(1, space.channels, h, h, generator=torch.Generator().manual_seed(0))


def time_decodes(dec: Decoder, z: torch.Tensor, runs: int, **decode) -> list[float]:
    cuda = dec.device.type == "cuda"
    times = []
    for _ in range(runs):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dec.decode(z, seed=0, **decode)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            dec.decode(z, seed=0, **decode)
            times.append(1000 * (time.perf_counter() - t0))
    return times


def profiled(dec: Decoder, z: torch.Tensor, profiler, **decode):
    """The profiler sees operators, and a CUDA-graph replay has none: profile the same step outside the graph
    (the kernel choice is made by the same dispatch)."""
    speed = dec.runtime.speed
    dec.runtime.speed = replace(speed, cuda_graphs=False)
    try:
        return profiler(lambda: dec.decode(z, seed=0, **decode))
    finally:
        dec.runtime.speed = speed


def measure(dec: Decoder, side: int, runs: int, warmup: int, breakdown: bool = False, baseline: int = 0,
            reference: torch.Tensor | None = None, window: int | None = None) -> dict:
    """`baseline`: bytes allocated before the model was built, not counted in the peak (nothing, unless an earlier
    mode left memory behind). `reference`: the eager bf16 image of this size, to judge this mode's image by.
    `window`: decode as windows of that side (their default overlap, a quarter)."""
    decode = {"window": (window, window)} if window else {}
    z = latent_for(dec, side)
    cuda = dec.device.type == "cuda"
    t0 = time.perf_counter()
    image = None
    for _ in range(max(warmup, 1)):  # compiles and captures at the first decode of a size
        image = dec.decode(z, seed=0, **decode)
    warm_s = time.perf_counter() - t0
    parity = image_parity(image, reference) if reference is not None else None
    del image
    kernels = profiled(dec, z, kernels_used, **decode)
    by_kind = profiled(dec, z, time_by_kind, **decode) if breakdown else None
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = time_decodes(dec, z, runs, **decode)
    overlap = default_overlap(window, window, side // z.shape[-1]) if window else 0  # the decode's own
    windows = {"window": (window, window), "overlap": overlap} if window else {}
    flops = decode_flops(dec.config, side, side, **windows).per_decode  # no prompt: the zero caption, all text
    median = statistics.median(times)
    return {"size": side, **({"window": window} if window else {}), "median_ms": median, "min_ms": min(times),
            "max_ms": max(times), "runs": runs,
            "warmup_s": warm_s, "peak_gib": (torch.cuda.max_memory_allocated() - baseline) / 2**30 if cuda else None,
            "tflop": flops / 1e12, "tflops_per_s": flops / (median / 1000) / 1e12,
            "attention": ", ".join(f"{k} x{v}" for k, v in sorted(kernels.items())) or "none seen",
            **({"image_vs_bf16": parity} if parity else {}), **({"breakdown": by_kind} if by_kind else {})}


def image_parity(image: torch.Tensor, reference: torch.Tensor) -> dict:
    c = compare("image", image, reference, precision="fp8")
    return {"max_abs": c.max_abs, "mean_abs": c.mean_abs, "cosine": c.cosine, "psnr_db": c.psnr,
            "within_fp8_row": c.passed}


def loaded_copy(host_model, preset: str) -> LoadedModel:
    """A copy of the seeded random model for one mode (each mode casts and quantises its own)."""
    return LoadedModel(copy.deepcopy(host_model), get_preset(preset), "random", f"preset:{preset}, seed 0", [])


def reference_images(loaded: LoadedModel, sizes: list[int], device: str) -> dict[int, torch.Tensor]:
    """The eager bf16 decode of each size's latent: what every mode's image is judged against."""
    dec = Decoder.from_model(loaded, device=device, speed=MODES["eager"])
    images = {side: dec.decode(latent_for(dec, side), seed=0).cpu() for side in sizes}
    del dec
    release_memory(device)
    return images


def release_memory(device: str) -> None:
    """Drop the last mode's model, compiled code and graph pools, so the next mode's peak is its own."""
    gc.collect()
    torch._dynamo.reset()  # compiled frames hold the module they were traced from
    if device == "cuda":
        torch.cuda.empty_cache()


def run(args, save=lambda meta, rows: None) -> tuple[dict, list[dict]]:
    """Measure every (mode, size); `save` is called after each row so a run cut short keeps what it measured."""
    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    preset = args.preset or ("tiny" if args.tiny else "pid-2k")
    cfg = get_preset(preset)
    sizes = args.sizes or ([128, 256] if args.tiny else [1024, 2048, 4096])
    gpu_modes = ["fast-cudnn", "fast", "fp8", "fp8-torchao", "fast-autotune", "compile", "eager"]  # targets first
    modes = args.modes or (["reference", "eager", "compile", "fp8"] if device == "cpu" else gpu_modes)
    deadline = time.perf_counter() + args.budget_s
    meta = {"preset": preset, "device": device_name(device), "torch": torch.__version__, "date": str(date.today()),
            "steps": 4, "batch": 1, "runs": args.runs, "warmup": args.warmup}
    rows = []
    host_model, references = None, {}
    for mode in modes:
        speed, note = speed_for(mode, device)
        if speed is None or time.perf_counter() > deadline:  # do not build a 1.3B model for nothing
            why = note if speed is None else f"time budget ({args.budget_s:.0f} s) spent"
            rows.append({"mode": mode, "skipped": why})
            continue
        label = f"{mode} ({note})" if note else mode
        if host_model is None:  # built once: drawing 1.36B random weights takes a while
            host_model = randomize(build_model(cfg), 0)
            references = reference_images(loaded_copy(host_model, preset), sizes, device) if args.parity else {}
        loaded = loaded_copy(host_model, preset)
        baseline = torch.cuda.memory_allocated() if device == "cuda" else 0
        try:
            dec = Decoder.from_model(loaded, device=device, speed=speed)  # cast on the host, moved once
        except Exception as err:  # noqa: BLE001 (a setting that cannot be built here is a row too)
            rows.append({"mode": label, "failed": failure(err)})
            continue
        for side in sizes:
            if side >= LARGE and mode not in FAST_MODES and not args.all_sizes:
                rows.append({"mode": label, "size": side, "skipped": "large sizes only in the fast modes"})
            elif time.perf_counter() > deadline:
                rows.append({"mode": label, "size": side, "skipped": f"time budget ({args.budget_s:.0f} s) spent"})
            else:
                rows.append({"mode": label, **measured(dec, side, args, baseline, references.get(side))})
                print(format_row(rows[-1]), flush=True)
            save(meta, rows)
        for side, window in args.windowed:  # windowed decodes: no parity reference (the eager image is whole)
            if time.perf_counter() > deadline:
                rows.append({"mode": label, "size": side, "window": window,
                             "skipped": f"time budget ({args.budget_s:.0f} s) spent"})
            else:
                rows.append({"mode": label, **measured(dec, side, args, baseline, None, window)})
                print(format_row(rows[-1]), flush=True)
            save(meta, rows)
        del dec, loaded
        release_memory(device)
    return meta, rows


def measured(dec: Decoder, side: int, args, baseline: int, reference: torch.Tensor | None,
             window: int | None = None) -> dict:
    """`measure`, or the failure as a row: one mode that fails on a GPU host must not cost the rest of the run."""
    try:
        return measure(dec, side, args.runs, args.warmup, side in args.breakdown_sizes and not window, baseline,
                       reference, window)
    except Exception as err:  # noqa: BLE001 (recorded, and the run goes on)
        return {"size": side, **({"window": window} if window else {}), "failed": failure(err)}


def failure(err: Exception) -> str:
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"


def speed_for(mode: str, device: str) -> tuple[Speed | None, str]:
    """The mode's setting here, or None and the reason it cannot run. On the CPU the CUDA-only parts are dropped."""
    speed = MODES[mode]
    if device != "cuda":
        if speed.attention == "cudnn":
            return None, "cuDNN attention needs CUDA"
        if mode == "fast":
            return None, "on the CPU the same as compile (CUDA graphs need CUDA)"
        speed = replace(speed, cuda_graphs=False)
    try:
        speed.check(torch.device(device))  # the setting's own refusal and its reason (FP8 kernels, libraries)
    except PiDError as err:
        return None, str(err.received)
    return speed, "no CUDA graphs on the CPU" if MODES[mode].cuda_graphs and device != "cuda" else ""


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()


def format_row(r: dict) -> str:
    output = f"{r['size']}x{r['size']}" if "size" in r else "all"
    output += f" in {r['window']}x{r['window']} windows" if "window" in r else ""
    if "skipped" in r or "failed" in r:
        why = f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {r['failed']}"
        return f"| {r['mode']} | {output} | {why} | | | | | | |"
    size = r["size"]
    peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
    paper = f"{PAPER[size][0]} ms, {PAPER[size][1]} GB" if size in PAPER else ""
    target = f"<= {TARGET_MS[size]:.0f} ms" if size in TARGET_MS and "window" not in r else ""
    parity = r.get("image_vs_bf16")
    vs_bf16 = f"{parity['psnr_db']:.1f} dB, cos {parity['cosine']:.5f}" if parity else "-"
    return (f"| {r['mode']} | {output} | {r['median_ms']:.1f} | {peak} | {r['tflops_per_s']:.3g} | "
            f"{r['attention']} | {vs_bf16} | {paper} | {target} |")


def markdown(meta: dict, rows: list[dict]) -> str:
    head = (f"{meta['preset']}, {meta['steps']} steps, batch 1, {meta['device']}, torch {meta['torch']}, "
            f"{meta['date']}; median of {meta['runs']} decodes after {meta['warmup']} warm-up")
    table = ["| mode | output | median ms | peak GiB | TFLOP/s | attention kernel | image vs eager bf16 | paper (H100) "
             "| target (H100 / H200) |", "|---|---|---|---|---|---|---|---|---|"]
    return head + "\n\n" + "\n".join(table + [format_row(r) for r in rows]) + "\n" + breakdown_table(rows)


def breakdown_table(rows: list[dict]) -> str:
    """Kernel time by kind of the profiled rows (one decode outside CUDA graphs; profiler overhead included)."""
    profiled_rows = [r for r in rows if "breakdown" in r]
    if not profiled_rows:
        return ""
    kinds = ["attention", "matmul", "norm", "other"]
    lines = ["", "Kernel time of one decode by kind (profiled outside CUDA graphs), ms and share:", "",
             "| mode | output | " + " | ".join(kinds) + " | total ms |", "|---|---|" + "---|" * (len(kinds) + 1)]
    for r in profiled_rows:
        b = r["breakdown"]
        cells = [f"{b['kinds'].get(k, 0.0):.1f} ({100 * b['kinds'].get(k, 0.0) / b['total_ms']:.0f}%)" for k in kinds]
        lines.append(f"| {r['mode']} | {r['size']}x{r['size']} | " + " | ".join(cells) + f" | {b['total_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny preset on the CPU (checks the harness)")
    p.add_argument("--preset", default=None)
    p.add_argument("--sizes", type=int, nargs="+", default=None)
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=None)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--budget-s", type=float, default=360, help="no new measurement starts after this (8 min in all)")
    p.add_argument("--all-sizes", action="store_true", help="run the large size in every mode")
    p.add_argument("--breakdown-sizes", type=int, nargs="*", default=[],
                   help="at these sizes also profile one decode and add up kernel time by kind")
    p.add_argument("--no-parity", dest="parity", action="store_false",
                   help="skip the eager bf16 reference decode per size and the image comparison against it")
    p.add_argument("--windowed", nargs="*", default=[], metavar="SIDE:WINDOW",
                   help="also decode SIDExSIDE as windows of WINDOWxWINDOW in every mode, e.g. 8192:2048")
    p.add_argument("--json")
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    args.windowed = [tuple(int(v) for v in pair.split(":")) for pair in args.windowed]
    def save(meta: dict, rows: list[dict]) -> None:
        if args.json:
            Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        if args.markdown:
            Path(args.markdown).write_text(markdown(meta, rows))

    meta, rows = run(args, save)
    save(meta, rows)
    print(markdown(meta, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
