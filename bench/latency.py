"""Decode latency, peak memory and achieved TFLOP/s of the PyTorch backend, per speed setting and image size.

    python bench/latency.py                  # pid-2k (1.36B, bf16, seeded random weights) on the GPU, all modes
    python bench/latency.py --tiny           # the same harness on the CPU at test size
    python bench/latency.py --modes fast --sizes 2048 --json out.json --markdown out.md

Modes: reference (the Decoder default: fp32 weights under bf16 autocast), eager (bf16 weights), compile
(bf16 + torch.compile), fast (bf16 + torch.compile + CUDA graphs), fast-cudnn (fast with the cuDNN attention kernel)
and fp8 (fast with FP8 linear layers, compute capability 8.9+). Each (mode, size) is timed over `--runs` decodes after
warm-up with CUDA events, as a user calls `Decoder.decode` (latent in host memory, image back to host memory, 4
steps, batch 1). `--budget-s` skips what would not finish in time (a 4096x4096 decode in eager mode takes seconds).
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
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
from pid_sdk.config import get_preset  # noqa: E402
from pid_sdk.decoder import Decoder  # noqa: E402
from pid_sdk.flops import decode_flops  # noqa: E402
from pid_sdk.latents import get_latent_space  # noqa: E402
from pid_sdk.model import build_model, randomize  # noqa: E402
from pid_sdk.runtime.attention import kernels_used  # noqa: E402
from pid_sdk.runtime.speed import Speed  # noqa: E402

MODES = {
    "reference": Speed(),
    "eager": Speed(weights="bf16"),
    "compile": Speed(weights="bf16", compile=True),
    "fast": Speed(weights="bf16", compile=True, cuda_graphs=True),
    "fast-cudnn": Speed(weights="bf16", compile=True, cuda_graphs=True, attention="cudnn"),
    "fp8": Speed(weights="fp8", compile=True, cuda_graphs=True),
    "fp8-torchao": Speed(weights="fp8-torchao", compile=True, cuda_graphs=True),
    "fast-autotune": Speed(weights="bf16", compile=True, cuda_graphs=True, autotune=True),
}
FAST_MODES = ("fast", "fast-cudnn", "fp8", "fp8-torchao", "fast-autotune")  # the modes that run 4096² by default
PAPER = {1024: (88.4, 10.9), 2048: (446.0, 13.0), 4096: (3754.6, 22.5)}  # Table 3: H100, torch.compile; ms, GB
TARGET_MS = {1024: 60.0, 2048: 300.0}  # issue 5, H100 bf16 (FP8: 2048 <= 220 ms)
LARGE = 4096  # only the fast modes run at this size by default: eager would take a minute for its runs alone


def latent_for(dec: Decoder, side: int) -> torch.Tensor:
    space = get_latent_space(dec.latent_space)
    h = side // (space.factor * dec.config.adapter.sr_scale)
    return torch.randn(1, space.channels, h, h, generator=torch.Generator().manual_seed(0))


def time_decodes(dec: Decoder, z: torch.Tensor, runs: int) -> list[float]:
    cuda = dec.device.type == "cuda"
    times = []
    for _ in range(runs):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dec.decode(z, seed=0)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            dec.decode(z, seed=0)
            times.append(1000 * (time.perf_counter() - t0))
    return times


def profiled(dec: Decoder, z: torch.Tensor, profiler):
    """The profiler sees operators, and a CUDA-graph replay has none: profile the same step outside the graph
    (the kernel choice is made by the same dispatch)."""
    speed = dec.runtime.speed
    dec.runtime.speed = replace(speed, cuda_graphs=False)
    try:
        return profiler(lambda: dec.decode(z, seed=0))
    finally:
        dec.runtime.speed = speed


def measure(dec: Decoder, side: int, runs: int, warmup: int, breakdown: bool = False, baseline: int = 0) -> dict:
    """`baseline`: bytes allocated before the model was built, not counted in the peak (nothing, unless an earlier
    mode left memory behind)."""
    z = latent_for(dec, side)
    cuda = dec.device.type == "cuda"
    t0 = time.perf_counter()
    for _ in range(warmup):  # compiles and captures at the first decode of a size
        dec.decode(z, seed=0)
    warm_s = time.perf_counter() - t0
    kernels = profiled(dec, z, kernels_used)
    by_kind = profiled(dec, z, time_by_kind) if breakdown else None
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = time_decodes(dec, z, runs)
    flops = decode_flops(dec.config, side, side).per_decode  # no prompt: the zero caption, all text positions
    median = statistics.median(times)
    return {"size": side, "median_ms": median, "min_ms": min(times), "max_ms": max(times), "runs": runs,
            "warmup_s": warm_s, "peak_gib": (torch.cuda.max_memory_allocated() - baseline) / 2**30 if cuda else None,
            "tflop": flops / 1e12, "tflops_per_s": flops / (median / 1000) / 1e12,
            "attention": ", ".join(f"{k} x{v}" for k, v in sorted(kernels.items())) or "none seen",
            **({"breakdown": by_kind} if by_kind else {})}


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
    host_model = None
    for mode in modes:
        speed, note = speed_for(mode, device)
        if speed is None or time.perf_counter() > deadline:  # do not build a 1.3B model for nothing
            why = note if speed is None else f"time budget ({args.budget_s:.0f} s) spent"
            rows.append({"mode": mode, "skipped": why})
            continue
        label = f"{mode} ({note})" if note else mode
        if host_model is None:  # built once: drawing 1.36B random weights takes a while
            host_model = randomize(build_model(cfg), 0)
        loaded = LoadedModel(copy.deepcopy(host_model), cfg, "random", f"preset:{preset}, seed 0", [])
        baseline = torch.cuda.memory_allocated() if device == "cuda" else 0
        dec = Decoder.from_model(loaded, device=device, speed=speed)  # cast on the host, moved once
        for side in sizes:
            if side >= LARGE and mode not in FAST_MODES and not args.all_sizes:
                rows.append({"mode": label, "size": side, "skipped": "large sizes only in the fast modes"})
            elif time.perf_counter() > deadline:
                rows.append({"mode": label, "size": side, "skipped": f"time budget ({args.budget_s:.0f} s) spent"})
            else:
                rows.append({"mode": label, **measure(dec, side, args.runs, args.warmup,
                                                      breakdown=side in args.breakdown_sizes, baseline=baseline)})
                print(format_row(rows[-1]), flush=True)
            save(meta, rows)
        del dec, loaded
        release_memory(device)
    return meta, rows


def speed_for(mode: str, device: str) -> tuple[Speed | None, str]:
    """The mode's setting here, or None and the reason it cannot run. On the CPU the CUDA-only parts are dropped."""
    speed = MODES[mode]
    if device != "cuda":
        if speed.attention == "cudnn":
            return None, "cuDNN attention needs CUDA"
        if speed.weights == "fp8-torchao":
            return None, "torchao's float8 kernels need CUDA"
        if mode == "fast":
            return None, "on the CPU the same as compile (CUDA graphs need CUDA)"
        return replace(speed, cuda_graphs=False), "no CUDA graphs on the CPU" if speed.cuda_graphs else ""
    if speed.weights.startswith("fp8") and torch.cuda.get_device_capability() < (8, 9):
        return None, "FP8 needs compute capability 8.9+"
    if speed.weights == "fp8-torchao" and importlib.util.find_spec("torchao") is None:
        return None, "torchao is not installed (gpu_check.sh installs the wheel carried in .whl/)"
    return speed, ""


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()


def format_row(r: dict) -> str:
    if "skipped" in r:
        return f"| {r['mode']} | {r.get('size', 'all')} | skipped: {r['skipped']} | | | | | |"
    size = r["size"]
    peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
    paper = f"{PAPER[size][0]} ms, {PAPER[size][1]} GB" if size in PAPER else ""
    target = f"<= {TARGET_MS[size]:.0f} ms" if size in TARGET_MS else ""
    return (f"| {r['mode']} | {size}x{size} | {r['median_ms']:.1f} | {peak} | {r['tflops_per_s']:.3g} | "
            f"{r['attention']} | {paper} | {target} |")


def markdown(meta: dict, rows: list[dict]) -> str:
    head = (f"{meta['preset']}, {meta['steps']} steps, batch 1, {meta['device']}, torch {meta['torch']}, "
            f"{meta['date']}; median of {meta['runs']} decodes after {meta['warmup']} warm-up")
    table = ["| mode | output | median ms | peak GiB | TFLOP/s | attention kernel | paper (H100) | target (H100) |",
             "|---|---|---|---|---|---|---|---|"]
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
    p.add_argument("--json")
    p.add_argument("--markdown")
    args = p.parse_args(argv)
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
