"""Decode latency and peak memory of the PyTorch backend (`Decoder`, 4 steps, batch 1).

    python bench/latency.py                      # pid-2k, 1024 and 2048 px, on the GPU
    python bench/latency.py --tiny               # the same harness on the CPU at test size
    python bench/latency.py --json out.json --markdown out.md

Weights are random (timing does not depend on their values), built directly on the device.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pid_sdk.checkpoints import LoadedModel  # noqa: E402
from pid_sdk.config import get_preset  # noqa: E402
from pid_sdk.decoder import Decoder  # noqa: E402
from pid_sdk.latents import get_latent_space  # noqa: E402
from pid_sdk.model import build_model  # noqa: E402


def build_decoder(preset: str, device: str, weights: str = "fp32", compile_: bool = False) -> Decoder:
    """The decoder as users get it (fp32 weights under bf16 autocast on CUDA), or with bf16 weights and/or the
    step network compiled: speed variants measured beside the baseline."""
    cfg = get_preset(preset)
    with torch.device(device):
        model = build_model(cfg)
    dec = Decoder.from_model(LoadedModel(model, cfg, "random", f"preset:{preset} (random init)", []), device=device)
    if weights == "bf16":
        if device != "cuda":
            raise SystemExit("--weights bf16 needs CUDA (the CPU path runs fp32 without autocast)")
        dec.runtime.model.to(torch.bfloat16)
    if compile_:
        dec.runtime.model.denoise = torch.compile(dec.runtime.model.denoise)
    return dec


def time_decode(dec: Decoder, side: int, runs: int, warmup: int) -> dict:
    space = get_latent_space(dec.latent_space)
    h = side // (space.factor * dec.config.adapter.sr_scale)
    z = torch.randn(1, space.channels, h, h)
    cuda = dec.device.type == "cuda"
    for _ in range(warmup):
        dec.decode(z, seed=0)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
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
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {"size": side, "median_ms": statistics.median(times), "min_ms": min(times), "runs": runs,
            "peak_gib": peak}


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny preset on the CPU (checks the harness)")
    p.add_argument("--preset", default=None)
    p.add_argument("--sizes", type=int, nargs="+", default=None)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--weights", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the per-step network")
    p.add_argument("--json")
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    preset = args.preset or ("tiny" if args.tiny else "pid-2k")
    sizes = args.sizes or ([128, 256] if args.tiny else [1024, 2048])
    dec = build_decoder(preset, device, args.weights, args.compile)
    rows = [time_decode(dec, s, args.runs, args.warmup) for s in sizes]
    meta = {"preset": preset, "device": device_name(device), "torch": torch.__version__, "date": str(date.today()),
            "precision": f"{dec.precision} autocast, {args.weights} weights", "steps": 4, "batch": 1,
            "mode": "compiled" if args.compile else "eager"}
    table = ["| output | median ms | min ms | peak GiB |", "|---|---|---|---|"]
    for r in rows:
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        table.append(f"| {r['size']}x{r['size']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {peak} |")
    header = (f"{meta['preset']}, {meta['precision']} ({meta['mode']}), {meta['steps']} steps, batch 1, "
              f"{meta['device']}, torch {meta['torch']}, {meta['date']}")
    print(header + "\n" + "\n".join(table))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(header + "\n\n" + "\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
