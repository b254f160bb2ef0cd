"""Measured peak memory of decodes against `estimate_memory`, whole and windowed.

    python bench/memory.py                                   # the demo model on the CPU: 256, 512, 1024/256, 1024/512
    python bench/memory.py --preset pid-2k --device cuda --cases 1024 2048 4096/2048 --json out.json

A case is SIDE (a whole SIDExSIDE decode) or SIDE/WINDOW (as windows of WINDOWxWINDOW). The peak is what the decode
allocates over the loaded model: on the GPU `torch.cuda.max_memory_allocated` over the memory held before; on the CPU
the tensors themselves, counted from the profiler's allocation timeline (resident memory adds the allocator's slack,
which an estimate of tensors cannot know). The estimate is `Decoder.estimate_memory` less its weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pid_sdk

DEMO = str(Path(pid_sdk.__file__).parent / "data" / "demo-flux1")


def peak_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """The most memory `fn` holds at once beyond what was held when it started."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - held
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action, MemoryProfile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for _, action, _, size in MemoryProfile(prof.profiler.kineto_results).timeline:
        live += size if action == Action.CREATE else -size if action == Action.DESTROY else 0
        peak = max(peak, live)
    return peak


def measure(dec, case: str, device: str, steps: int = 2) -> dict:
    side, _, window = case.partition("/")
    side = int(side)
    win = (int(window), int(window)) if window else None
    cell = dec.output_size((1, 1))[0]
    z = torch.randn(1, dec.config.adapter.latent_channels, side // cell, side // cell,
                    generator=torch.Generator().manual_seed(0))
    measured = peak_bytes(lambda: dec.decode(z, seed=0, window=win, windows_per_call=1, steps=steps), device)
    est = dec.estimate_memory(side, side, window=win)
    expected = est.total - est.weights
    return {"output": f"{side}x{side}", "window": f"{win[0]}x{win[1]}" if win else "whole",
            "measured_mib": round(measured / 2**20, 1), "estimate_mib": round(expected / 2**20, 1),
            "measured_over_estimate": round(measured / expected, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEMO)
    p.add_argument("--preset", help="random weights of this preset instead of --model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cases", nargs="*", default=["256", "512", "1024/256", "1024/512"])
    p.add_argument("--steps", type=int, default=2, help="every step's peak is alike; the second re-noises")
    p.add_argument("--json")
    args = p.parse_args(argv)
    dec = pid_sdk.Decoder.load(None if args.preset else args.model, preset=args.preset, device=args.device)
    rows = []
    for case in args.cases:
        rows.append(measure(dec, case, args.device, args.steps))
        print(json.dumps(rows[-1]), flush=True)
    cuda = torch.device(args.device).type == "cuda"
    machine = {"device": torch.cuda.get_device_name() if cuda else platform.machine(), "torch": torch.__version__,
               "precision": dec.precision, "model": args.preset or args.model, "steps": args.steps,
               "date": str(date.today())}
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "machine": machine}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
