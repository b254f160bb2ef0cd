"""Decode latency of the C ABI against the Python backends, on this machine.

    python bench/embedding.py [--folder engines/demo-aoti] [--repeats 5] [--out docs/results/embedding.json]

Runs the bundled sample latent (FLUX.1, 16x16 -> 512x512, 4 steps) through: the C ABI (libpid_sdk.so via ctypes,
bindings/build.sh first), `Decoder.load(folder, backend="aoti")` (the same packages from Python) and the eager PyTorch
decoder on the demo model. Without --folder, exports the demo model's AOTInductor packages into a temporary folder
first. Prints open time, first decode and the median of the steady decodes, as a markdown table with the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bindings"))
SAMPLE = ROOT / "samples" / "sample_latent_flux1.safetensors"


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(open_fn, decode_fn, repeats: int) -> dict:
    opened = {}
    t_open = timed(lambda: opened.setdefault("handle", open_fn()))
    first = timed(lambda: decode_fn(opened["handle"], 0))
    steady = [timed(lambda s=s: decode_fn(opened["handle"], s)) for s in range(1, repeats + 1)]
    return {"open_s": t_open, "first_decode_s": first, "decode_median_s": statistics.median(steady),
            "decode_min_s": min(steady)}


def c_abi(folder: Path, latent: np.ndarray, repeats: int) -> dict:
    import ctypes_abi

    lib = ctypes_abi.load()

    def decode(handle, seed):
        status, _ = handle.decode(latent, seed=seed)
        assert status == ctypes_abi.OK, ctypes_abi.last_error(lib)

    return measure(lambda: ctypes_abi.Handle(lib, folder), decode, repeats)


def python(path, backend: str, latent: np.ndarray, repeats: int) -> dict:
    import pid_sdk

    z = torch.from_numpy(latent)
    return measure(lambda: pid_sdk.Decoder.load(path, backend=backend),
                   lambda dec, seed: dec.decode(z, seed=seed, output="numpy"), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", help="an engine folder with the demo model's 512x512 AOTInductor packages")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="write the results as JSON")
    args = parser.parse_args()
    import pid_sdk
    from safetensors.numpy import load_file

    latent = load_file(SAMPLE)["latent"][None].astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder) if args.folder else Path(tmp) / "demo"
        if not folder.exists():
            from export.export_folder import export_engine_set
            from pid_sdk.buckets import Bucket

            export_engine_set(folder, model=pid_sdk.DEMO_MODEL, sizes=[Bucket(512, 512)], format="aoti")
        rows = {"C ABI (libpid_sdk.so, AOTInductor)": c_abi(folder, latent, args.repeats),
                "Python, backend='aoti' (same packages)": python(folder, "aoti", latent, args.repeats),
                "Python, PyTorch eager (demo model)": python(pid_sdk.DEMO_MODEL, "auto", latent, args.repeats)}
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"Demo model, sample latent -> 512x512, 4 steps, batch 1; {machine}; {date.today()}\n")
    print("| path | open | first decode | decode (median of {}) |".format(args.repeats))
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['open_s']:.2f} s | {r['first_decode_s']:.2f} s | {r['decode_median_s']:.3f} s |")
    if args.out:
        Path(args.out).write_text(json.dumps({"date": str(date.today()), "machine": machine,
                                              "repeats": args.repeats, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
