"""The measured spread every row of `pid_sdk.compare.TOLERANCES` is derived from, and the wrong answers each row
must refuse.

    python bench/tolerances.py --out docs/results/DATE-cpu-tolerances.json     # about 25 minutes on 2 cores

Real paths, each against its reference, every step's velocity and the final image:
  - ONNX Runtime (CPU provider) on graph sets of a tiny preset of every latent space (seeded random weights, random
    latents, several seeds and step counts) and of the demo model (the sample latent): fp32, fp16, fp32 with fp16
    attention (the fp16 row), bf16 run as its fp32 twin (bf16-twin), fp8-fp32 with attention as the graph, in FP8
    (q, k, v) and as TensorRT's FP8 multi-head attention (the fp8 row), against the fp32 PyTorch reference of the
    folder's weights (`compare_folder`);
  - the PyTorch settings that run on a CPU, on the demo model and the tiny presets: bf16 weights against fp32 (the
    bf16 row), FP8 matmuls against bf16 weights (fp8).
Wrong answers, on the demo model's decode of the sample latent with seed 0: the decode with seeds 1-3, and 2x2 and
4x4 box blurs of it.

Each bound of a row is the worst real result times the margin (max and mean error, cosine gap; the PSNR floor
20 log10(margin) dB lower), but never more than halfway (geometrically; in dB for PSNR) to the least wrong answer the
row must refuse. The JSON keeps the worst real result per row and per source, the least wrong answers, the derived
rows and each wrong answer's verdict under each row (which bounds refuse it); `--check` exits 1 when a derived row
passes a wrong answer it must refuse.
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
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pid_sdk.compare import (KINDS, TOLERANCES, Comparison, Row, Tolerance, box_blur, compare,  # noqa: E402
                             run_parity)

CASES = {"tiny-pid-2k": "64x96", "tiny-pid-2kto4k": "64x96", "tiny-pid-2kto4k-sdxl": "96x64",
         "tiny-pid-2k-flux2": "64x128", "tiny-pid-2kto4k-v1.5-flux2": "64x128",
         "tiny-pid-2kto4k-v1.5-qwenimage": "64x96", "tiny-pid-2k-dinov2": "128x64",
         "tiny-pid-2k-sr8x-siglip": "128x256"}
# (graph precision, attention dtype): fp32 with fp16 attention is judged by the fp16 row, the FP8 attention forms by fp8
ORT_VARIANTS = [("fp32", None), ("fp16", None), ("bf16", None), ("fp8-fp32", None), ("fp32", "fp16"),
                ("fp8-fp32", "fp8"), ("fp8-fp32", "fp8-mha")]
SAMPLE = ROOT / "samples" / "sample_latent_flux1.safetensors"
# The wrong answers each row must refuse: the demo decode with another seed, and a box blur of the right image
# (2x2; 4x4 for fp8, whose row has the most room).
MUST_REFUSE = {row: ("other seed", "blur 4x4" if row == "fp8" else "blur 2x2") for row in TOLERANCES}


def wrong_answers(reference: torch.Tensor, other_seeds: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    return {"other seed": other_seeds, "blur 2x2": [box_blur(reference, 2)], "blur 4x4": [box_blur(reference, 4)]}


def demo_decodes(seeds: list[int]) -> list[torch.Tensor]:
    from pid_sdk import DEMO_MODEL, Decoder

    dec = Decoder.load(DEMO_MODEL, device="cpu")
    z = load_file(str(SAMPLE))["latent"]
    return [dec.decode(z, seed=s) for s in seeds]


def ort_comparisons(folder: Path, seeds: list[int], steps: list[int], latent=None) -> list[Comparison]:
    from pid_sdk.compare import compare_folder

    out = []
    for seed in seeds:
        for n in steps:
            for result in compare_folder(folder, "onnxruntime", steps=n, seed=seed, latent=latent):
                out += [*result.report.steps, result.report.image]
    return out


def export(folder: Path, log, **kwargs) -> None:
    """Every graph variant ONNX Runtime runs on a CPU, of one model into one folder."""
    from export.export_folder import export_engine_set

    export_engine_set(folder, variants=ORT_VARIANTS, log=log, **kwargs)


def torch_comparisons(load, latent: torch.Tensor, seeds: list[int]) -> list[Comparison]:
    """bf16 weights against fp32, FP8 matmuls against bf16 weights: the PyTorch settings a CPU runs."""
    from pid_sdk import Speed

    fp32, bf16, fp8 = load(None), load("bf16"), load(Speed(weights="fp8"))
    out = []
    for seed in seeds:
        for reference, candidate, row in ((fp32, bf16, "bf16"), (bf16, fp8, "fp8")):
            report = run_parity(reference, candidate, latent, precision=row, seed=seed)
            out += [*report.steps, report.image]
    return out


def measure(presets: list[str], seeds: list[int], steps: list[int], log) -> dict[str, list[Comparison]]:
    """Every real result, by where it came from ("onnxruntime tiny-pid-2k", "pytorch demo-flux1", ...)."""
    from pid_sdk import DEMO_MODEL, Decoder
    from pid_sdk.buckets import Bucket
    from pid_sdk.config import PRESETS

    quiet = lambda *_: None  # noqa: E731
    found: dict[str, list[Comparison]] = {}
    for preset in presets:
        size = Bucket.parse(CASES[preset])
        with tempfile.TemporaryDirectory() as tmp:
            export(Path(tmp) / "e", quiet, preset=preset, sizes=[size])
            found[f"onnxruntime {preset}"] = ort_comparisons(Path(tmp) / "e", seeds, steps)
        a = PRESETS[preset].adapter
        lh, lw = size.latent_size(a.latent_factor, a.sr_scale)
        z = torch.randn(1, a.latent_channels, lh, lw, generator=torch.Generator().manual_seed(5))
        found[f"pytorch {preset}"] = torch_comparisons(
            lambda speed, p=preset: Decoder.load(preset=p, seed=3, device="cpu", speed=speed), z, seeds)
        log(f"{preset}: done")
    z = load_file(str(SAMPLE))["latent"][None]
    with tempfile.TemporaryDirectory() as tmp:
        export(Path(tmp) / "e", quiet, model=str(DEMO_MODEL), sizes=[Bucket(512, 512)])
        found["onnxruntime demo-flux1"] = ort_comparisons(Path(tmp) / "e", seeds[:1], steps, latent=z)
    found["pytorch demo-flux1"] = torch_comparisons(
        lambda speed: Decoder.load(DEMO_MODEL, device="cpu", speed=speed), z, seeds)
    log("demo-flux1: done")
    return found


def worst(comparisons: list[Comparison]) -> dict[str, dict[str, dict]]:
    """Per row and kind (step, image): the tightest tolerance every real result passes, and how many it covers."""
    rows: dict[str, dict[str, dict]] = {}
    for c in comparisons:
        need = c.needed
        w = rows.setdefault(c.row, {}).setdefault(c.kind, {"max_abs": 0.0, "mean_abs": 0.0, "min_cosine": 1.0,
                                                             "min_psnr": math.inf, "comparisons": 0})
        w["max_abs"], w["mean_abs"] = max(w["max_abs"], need.max_abs), max(w["mean_abs"], need.mean_abs)
        w["min_cosine"], w["min_psnr"] = min(w["min_cosine"], need.min_cosine), min(w["min_psnr"], need.min_psnr)
        w["comparisons"] += 1
    return rows


def round_up(x: float) -> float:
    """Two significant digits, rounded up: 1.271e-4 -> 1.3e-4 (one digit could move a bound halfway to a wrong
    answer)."""
    if x <= 0:
        return 0.0
    exp = math.floor(math.log10(x)) - 1
    return float(f"{math.ceil(round(x / 10 ** exp, 9))}e{exp}")


def derive(real: dict, wrong: dict | None, margin: float) -> Tolerance:
    """Bounds between the worst right answer and the best wrong one: each error bound `margin` times the worst
    real result (the PSNR floor 20 log10(margin) dB lower), but never more than halfway (geometrically) to the
    least wrong answer the bounds must refuse, so neither side sits closer to a bound than the other."""
    wrong = wrong or {"max_abs": math.inf, "mean_abs": math.inf, "min_cosine": -1.0, "min_psnr": -math.inf}

    def bound(r: float, w: float) -> float:
        return min(r * margin, math.sqrt(r * w)) if w > r else r * margin

    return Tolerance(max_abs=round_up(bound(real["max_abs"], wrong["max_abs"])),
                     mean_abs=round_up(bound(real["mean_abs"], wrong["mean_abs"])),
                     min_cosine=round(1 - round_up(bound(1 - real["min_cosine"], 1 - wrong["min_cosine"])), 12),
                     min_psnr=math.floor(10 * psnr_floor(real["min_psnr"], wrong["min_psnr"], margin)) / 10)


def psnr_floor(real: float, wrong: float, margin: float) -> float:
    """20 log10(margin) dB under the worst real PSNR, but not below the midpoint to a wrong answer that is worse."""
    lower = real - 20 * math.log10(margin)
    return max(lower, (real + wrong) / 2) if wrong < real else lower


def derive_row(real: dict[str, dict], wrong: dict, margin: float) -> Row:
    """Step bounds from the steps' spread alone; image bounds also kept from the wrong images."""
    return Row(step=derive(real["step"], None, margin), image=derive(real["image"], wrong, margin))


def least_wrong(row: str, wrong: dict[str, list[torch.Tensor]], reference: torch.Tensor) -> dict:
    """Per statistic, the least wrong of the answers `row` must refuse (the smallest error, highest cosine and
    PSNR any of them reaches)."""
    needed = [compare(name, img, reference, row).needed for name in MUST_REFUSE[row] for img in wrong[name]]
    return {"max_abs": min(n.max_abs for n in needed), "mean_abs": min(n.mean_abs for n in needed),
            "min_cosine": max(n.min_cosine for n in needed), "min_psnr": max(n.min_psnr for n in needed)}


def verdicts(row: str, derived: Row, wrong: dict[str, list[torch.Tensor]],
             reference: torch.Tensor) -> dict[str, list[dict]]:
    """Each wrong image judged by the derived row's image bounds: its statistics and the bounds that refuse it."""
    from unittest import mock

    out = {}
    with mock.patch.dict(TOLERANCES, {row: derived}):
        for name, images in wrong.items():
            out[name] = [{"refused_by": (c := compare(name, img, reference, row)).failures,
                          "needed": c.needed.__dict__} for img in images]
    return out


def as_dict(row: Row) -> dict:
    return {kind: getattr(row, kind).__dict__ for kind in KINDS}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=list(CASES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--margin", type=float, default=2.0, help="errors times this; PSNR floor 20 log10(it) dB lower")
    ap.add_argument("--fp32-margin", type=float, default=4.0)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--check", action="store_true", help="exit 1 when a derived row passes a wrong answer")
    ap.add_argument("--derive-only", type=Path, metavar="JSON",
                    help="derive the rows again from an earlier run's measured spread (no new measurement)")
    args = ap.parse_args(argv)
    if args.derive_only:
        earlier = json.loads(args.derive_only.read_text())
        measured, by_source = earlier["worst"], earlier["worst_by_source"]
        args.presets, args.seeds, args.steps = earlier["presets"], earlier["seeds"], earlier["steps"]
    else:
        found = measure(args.presets, args.seeds, args.steps, print)
        measured = worst([c for comparisons in found.values() for c in comparisons])
        by_source = {source: worst(comparisons) for source, comparisons in found.items()}
    reference, *others = demo_decodes([0, 1, 2, 3])
    wrong = wrong_answers(reference, others)
    nearest = {r: least_wrong(r, wrong, reference) for r in measured}
    rows = {r: derive_row(w, nearest[r], args.fp32_margin if r == "fp32" else args.margin)
            for r, w in measured.items()}
    judged = {r: verdicts(r, t, wrong, reference) for r, t in rows.items()}
    separated = {r: all(v["refused_by"] for name in MUST_REFUSE[r] for v in judged[r][name]) for r in rows}
    result = {"date": date.today().isoformat(),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
              "presets": args.presets, "seeds": args.seeds, "steps": args.steps,
              "margin": {"fp32": args.fp32_margin, "others": args.margin}, "worst": measured,
              "worst_by_source": by_source, "least_wrong": nearest,
              "derived": {r: as_dict(t) for r, t in rows.items()},
              "table": {r: as_dict(t) for r, t in TOLERANCES.items()},
              "must_refuse": MUST_REFUSE, "wrong_answers": judged, "separated": separated}
    print(json.dumps({k: result[k] for k in ("worst", "derived", "separated")}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if args.check and not all(separated.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
