"""The full-size (1.3B) graph sets run by ONNX Runtime against the PyTorch reference, on a CPU machine.

    python bench/full_size_onnx.py [--preset pid-2k] [--size 512x512] [--precision fp32 bf16] [--out FILE.json]

Exports the preset with seeded random weights (no official checkpoint is reachable here) at one small output size in
each precision into a temporary engine folder, then runs `compare_folder`: each entry on its own graph (a bf16 graph
as its fp32 twin: ONNX Runtime's CPU provider has no bf16 kernels) against the fp32 PyTorch reference of the same
weights, per step and for the final image. Prints wall time and peak memory of each phase and the parity rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def comparison_row(c) -> dict:
    return {"name": c.name, "precision": c.precision, "max_abs": c.max_abs, "mean_abs": c.mean_abs,
            "cosine": c.cosine, "psnr": c.psnr, "scale": c.scale, "passed": c.passed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="pid-2k")
    parser.add_argument("--size", default="512x512")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--out", help="write the results as JSON")
    args = parser.parse_args()
    from export.export_folder import export_engine_set
    from pid_sdk.buckets import Bucket
    from pid_sdk.compare import compare_folder, summary

    rows: dict = {"date": str(date.today()), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
                  f"torch {torch.__version__}", "preset": args.preset, "size": args.size, "phases": {}}
    with tempfile.TemporaryDirectory(prefix="pid-full-size-") as tmp:
        folder = Path(tmp) / "engines"
        t0 = time.perf_counter()
        export_engine_set(folder, preset=args.preset, sizes=[Bucket.parse(args.size)], precisions=args.precision)
        rows["phases"]["export"] = {"wall_s": time.perf_counter() - t0, "peak_rss_gib": peak_gib()}
        t0 = time.perf_counter()
        results = compare_folder(folder, "onnxruntime", steps=4, seed=0)
        rows["phases"]["compare"] = {"wall_s": time.perf_counter() - t0, "peak_rss_gib": peak_gib()}
    for r in results:
        print(r)
    print(summary(results))
    rows["entries"] = [{"entry": r.entry, "status": r.status, "ran": r.ran, "reason": r.reason,
                        "steps": [comparison_row(c) for c in r.report.steps] if r.report else [],
                        "image": comparison_row(r.report.image) if r.report else None} for r in results]
    for phase, p in rows["phases"].items():
        print(f"{phase}: {p['wall_s']:.0f} s, peak resident {p['peak_rss_gib']:.1f} GiB")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
