"""Attention alone, at the shapes a pid-2k decode runs: TFLOP/s of each SDPA kernel family, and the profiler's view.

    python bench/attention.py --size 2048           # CUDA: cudnn / flash / efficient, model layout and variants
    python bench/attention.py --tiny                # the harness on the CPU

Attention is most of a large decode (`pid_sdk.flops`: 106 of 176 TFLOP at 2048x2048, 96 in the MM-DiT blocks), so
its kernel's rate bounds the decode's latency. Rows: the MM-DiT shape (24 heads of 64, image + 300 text tokens) and
the PiT shape (16 heads of 72), with q, k, v laid out as the model makes them ([B, N, heads, Dh] transposed) and
contiguous, the sequence padded to a multiple of 256, and the same FLOPs with heads of 128 (what a kernel reaches at
a larger head dimension). The `split` layout runs the MM-DiT attention as the runtime's `split_attention` does
(image and text parts, merged through the log-sum-exp: pid_sdk/model/split_attention.py); its TFLOP/s count the
FLOPs of the single call it replaces.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel_time import time_by_kind  # noqa: E402

from pid_sdk.model.split_attention import split_joint_attention  # noqa: E402
from pid_sdk.runtime.attention import SDPA_KERNELS, attention_context, lse_kernel, profiled_events  # noqa: E402
from pid_sdk.runtime.fp8_attention import fp8_attention_supported, fp8_sdpa  # noqa: E402

TEXT = 300  # text tokens of the joint attention (txt_max_length)
FP8 = "cudnn-fp8"  # Speed(fp8_attention=True): cuDNN's FP8 SDPA (pid_sdk/runtime/fp8_attention.py)


def shapes(side: int, patch: int = 16, text: int = TEXT) -> list[tuple[str, int, int, int]]:
    """(label, heads, tokens, head_dim) of the attention calls of one step, and the variants worth comparing."""
    n = (side // patch) ** 2
    padded = -(-(n + text) // 256) * 256
    return [("MM-DiT", 24, n + text, 64), ("PiT", 16, n, 72), ("MM-DiT padded to 256", 24, padded, 64),
            ("MM-DiT FLOPs, heads of 128", 12, n + text, 128)]


LAYOUTS = {"MM-DiT": ("model", "contiguous", "split"), "PiT": ("model", "contiguous")}


def qkv(heads: int, tokens: int, dim: int, layout: str, device: str, dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator(device).manual_seed(0)
    if layout in ("model", "split"):  # [B, N, heads, Dh] -> [B, heads, N, Dh], a strided view as in the model
        return [torch.randn(1, tokens, heads, dim, generator=gen, device=device, dtype=dtype).transpose(1, 2)
                for _ in range(3)]
    return [torch.randn(1, heads, tokens, dim, generator=gen, device=device, dtype=dtype) for _ in range(3)]


def time_ms(fn, runs: int, cuda: bool) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def measure(label: str, heads: int, tokens: int, dim: int, layout: str, kernel: str, args) -> dict:
    cuda = args.device == "cuda"
    q, k, v = qkv(heads, tokens, dim, layout, args.device, torch.bfloat16 if cuda else torch.float32)
    flops = 4 * tokens * tokens * heads * dim
    row = {"shape": label, "heads": heads, "tokens": tokens, "head_dim": dim, "layout": layout, "kernel": kernel}
    try:
        with attention_context("auto" if kernel == FP8 else kernel):
            call = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
            if kernel == FP8:  # quantisation of q, k, v included: what a decode pays
                call = lambda: fp8_sdpa(q, k, v)  # noqa: E731
            if layout == "split":
                parts = [(t[:, :, TEXT:], t[:, :, :TEXT]) for t in (q, k, v)]  # (image, text) views
                image, text = tuple(p[0] for p in parts), tuple(p[1] for p in parts)
                split_kernel = lse_kernel(kernel, torch.device(args.device))
                call = lambda: split_joint_attention(image, text, split_kernel)  # noqa: E731
            ms = time_ms(call, args.runs, cuda)
            profiled = time_by_kind(call)["kinds"].get("attention", 0.0)
            events = sdpa_events(call)
    except Exception as err:  # noqa: BLE001 (the kernel family does not take this shape here: a row says so)
        return {**row, "error": str(err).splitlines()[0][:120]}
    return {**row, "ms": ms, "tflops_per_s": flops / ms / 1e9, "profiled_attention_ms": profiled,
            "profiler_events": events}


def sdpa_events(fn) -> dict[str, int]:
    """How many events the profiler lists for one SDPA call, by device type (does it count an op twice?)."""
    found: dict[str, int] = {}
    for event in profiled_events(fn):
        if "scaled_dot_product" in event.key:
            key = f"{event.key} ({event.device_type})"
            found[key] = found.get(key, 0) + event.count
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=2048, help="output side of the decode whose shapes are timed")
    p.add_argument("--tiny", action="store_true", help="CPU, 256x256 output (checks the harness)")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--json")
    args = p.parse_args(argv)
    args.device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    side = 256 if args.tiny else args.size
    kernels = ["flash"] if args.device == "cpu" else [k for k in SDPA_KERNELS if k != "math"]
    fp8_ok, fp8_why = fp8_attention_supported(torch.device(args.device))
    print(f"FP8 attention (cuDNN): {'measured' if fp8_ok else fp8_why}", flush=True)
    rows = []
    for label, heads, tokens, dim in shapes(side):
        for layout in LAYOUTS.get(label, ("model",)):
            for kernel in kernels + ([FP8] if fp8_ok and layout == "model" and label.startswith("MM-DiT") else []):
                rows.append(measure(label, heads, tokens, dim, layout, kernel, args))
                print(format_row(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"size": side, "device": args.device, "torch": torch.__version__,
                                               "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
                                               "rows": rows}, indent=2))
    return 0


def format_row(r: dict) -> str:
    what = f"| {r['shape']} | {r['heads']}x{r['head_dim']} | {r['tokens']} | {r['layout']} | {r['kernel']} |"
    if "error" in r:
        return f"{what} failed: {r['error']} | | |"
    return f"{what} {r['ms']:.3f} | {r['tflops_per_s']:.3g} | {r['profiled_attention_ms']:.3f} |"


if __name__ == "__main__":
    sys.exit(main())
