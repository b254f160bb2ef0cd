"""The spread of backend-vs-reference errors that `pid_sdk.compare.TOLERANCES` is derived from.

    python bench/tolerances.py --out docs/results/tolerances.json

Exports a tiny preset of every latent space (the buckets of tests/test_export.py) in fp32, fp16 and bf16 (run as
its fp32 twin on the CPU), then runs `run_parity` of ONNX Runtime against the fp32 PyTorch reference over several
seeds and step counts. For each judged precision it prints the worst relative max / mean error and the lowest
cosine over every step and image, and the tolerance the table should hold: the worst case times the margin,
rounded up to one significant digit.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = {"tiny-pid-2k": "64x96", "tiny-pid-2kto4k": "64x96", "tiny-pid-2kto4k-sdxl": "96x64",
         "tiny-pid-2k-flux2": "64x128", "tiny-pid-2kto4k-v1.5-flux2": "64x128",
         "tiny-pid-2kto4k-v1.5-qwenimage": "64x96", "tiny-pid-2k-dinov2": "128x64",
         "tiny-pid-2k-sr8x-siglip": "128x256"}


def measure(presets: list[str], precisions: list[str], seeds: list[int], steps: list[int]) -> dict:
    from export.engine_set import export_engine_set
    from pid_sdk.buckets import Bucket
    from pid_sdk.compare import compare_folder

    worst: dict[str, dict] = {}
    for preset in presets:
        with tempfile.TemporaryDirectory() as tmp:
            export_engine_set(tmp, preset=preset, sizes=[Bucket.parse(CASES[preset])], precisions=precisions,
                              log=lambda *_: None)
            for seed in seeds:
                for n in steps:
                    for result in compare_folder(tmp, "onnxruntime", steps=n, seed=seed):
                        for c in [*result.report.steps, result.report.image]:
                            w = worst.setdefault(c.precision, {"max_abs": 0.0, "mean_abs": 0.0, "min_cosine": 1.0,
                                                               "comparisons": 0})
                            need = c.needed
                            w["max_abs"] = max(w["max_abs"], need.max_abs)
                            w["mean_abs"] = max(w["mean_abs"], need.mean_abs)
                            w["min_cosine"] = min(w["min_cosine"], need.min_cosine)
                            w["comparisons"] += 1
                print(f"{preset} seed {seed}: done", flush=True)
    return worst


def round_up(x: float) -> float:
    """One significant digit, rounded up: 1.27e-4 -> 2e-4."""
    if x <= 0:
        return 0.0
    exp = math.floor(math.log10(x))
    return math.ceil(x / 10 ** exp) * 10 ** exp


def suggest(worst: dict, margin: float) -> dict:
    return {p: {"max_abs": round_up(w["max_abs"] * margin), "mean_abs": round_up(w["mean_abs"] * margin),
                "min_cosine": 1 - round_up((1 - w["min_cosine"]) * margin)} for p, w in worst.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=list(CASES))
    ap.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "bf16"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--margin", type=float, default=4.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    worst = measure(args.presets, args.precisions, args.seeds, args.steps)
    result = {"date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}", "presets": args.presets,
              "seeds": args.seeds, "steps": args.steps, "margin": args.margin, "worst": worst,
              "suggested": suggest(worst, args.margin)}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
