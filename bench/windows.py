"""Windowed decoding measured: quality against the whole image and taef1 + bicubic, and peak memory by output size.

    python bench/windows.py quality --photos /usr/share/backgrounds/Infinite-Sea_by_Aury88.jpg ... \
        --json docs/results/windows-quality.json --picture docs/quality/windows.jpg
    python bench/windows.py memory --sizes 1024 2048 4096 --json docs/results/windows-memory.json

quality: each photograph is shrunk to a short side of `--shrink` pixels and cut into crops of each `--size`
(2x and 4x the demo's 512x512 training size by default); a crop's 4x smaller version is encoded with taef1, and that
latent decoded by taef1 + bicubic x4, the whole-image decode, and windowed decodes of `--window` pixels at each
overlap (0, 1/8, 1/4, 1/2 of the window) and blend (4 steps, seed 0). Reported per decode: PSNR and SSIM against the
crop, "seams": the mean step between neighbouring pixels across the windows' inner edges over the mean step
everywhere (rows and columns together; the whole-image and bicubic decodes at the default plan's edges), and
"grid": the same across the 16-pixel patch grid's other lines. Window edges lie on the patch grid, which the demo
draws: a window edge is invisible where its seams equal the grid's.

memory: each size decoded in a fresh process (a FLUX.1 latent of noise, 4 steps), its peak resident memory
(ru_maxrss) and the peak over the model loaded and idle; windowed with `--window` and, up to `--whole-up-to`, whole.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality import taef1_image, to_uint8  # noqa: E402

import pid_sdk  # noqa: E402
from pid_sdk.tae import SHARED_TAE_DIR, TinyAutoencoder  # noqa: E402
from pid_sdk.windows import BLENDS, plan_windows  # noqa: E402
from training.data import downsample, to_tensor  # noqa: E402

DEMO = str(ROOT / "pid_sdk" / "data" / "demo-flux1")


def crops(photo: Path, shrink: int, height: int, width: int, most: int) -> list[tuple[str, torch.Tensor]]:
    """Up to `most` disjoint (height, width) crops of the photograph shrunk to a short side of `shrink`, centred
    as a grid: [1, 3, H, W] in [0, 1]."""
    img = Image.open(photo).convert("RGB")
    scale = shrink / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    x = to_tensor(np.asarray(img))
    rows, columns = x.shape[1] // height, x.shape[2] // width
    top0, left0 = (x.shape[1] - rows * height) // 2, (x.shape[2] - columns * width) // 2
    out = []
    for r in range(rows):
        for c in range(columns):
            top, left = top0 + r * height, left0 + c * width
            out.append((f"{photo.stem}@{top},{left}", x[None, :, top:top + height, left:left + width]))
    return out[:most]


def seam_ratio(img: np.ndarray, rows: list[int], columns: list[int]) -> float:
    """Mean |step| across the given row and column edges (an edge at c: pixels c-1 and c) over the mean |step|
    everywhere; about 1 where the edges are invisible."""
    g = img.astype(np.float64)
    dx, dy = np.abs(np.diff(g, axis=1)).mean(axis=(0, 2)), np.abs(np.diff(g, axis=0)).mean(axis=(1, 2))
    at = [dx[c - 1] for c in columns] + [dy[r - 1] for r in rows]
    return float(np.mean(at) / max((dx.mean() + dy.mean()) / 2, 1e-9)) if at else 1.0


def window_edges(height: int, width: int, window: int, overlap: int) -> tuple[list[int], list[int]]:
    """The rows and columns where a window of the plan begins or ends inside the image."""
    plan = plan_windows(height, width, (min(window, height), min(window, width)), overlap)
    rows = {w.top for w in plan} | {w.top + w.height for w in plan}
    columns = {w.left for w in plan} | {w.left + w.width for w in plan}
    return sorted(rows - {0, height}), sorted(columns - {0, width})


def grid_lines(size: int, edges: list[int], period: int = 16) -> list[int]:
    """The patch grid's lines that are no window edge: the control a window edge is read against."""
    return [i for i in range(period, size, period) if i not in edges]


def score(img: np.ndarray, ref: np.ndarray, edges: tuple[list[int], list[int]]) -> dict:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rows, columns = edges
    grid = grid_lines(img.shape[0], rows), grid_lines(img.shape[1], columns)
    return {"psnr": round(float(peak_signal_noise_ratio(ref, img, data_range=255)), 2),
            "ssim": round(float(structural_similarity(ref, img, channel_axis=2, data_range=255)), 3),
            "seams": round(seam_ratio(img, rows, columns), 3), "grid": round(seam_ratio(img, *grid), 3)}


def quality_rows(dec, tae: TinyAutoencoder, name: str, hr: torch.Tensor, args) -> tuple[list[dict], dict]:
    """Every decode of one crop, scored; and the decodes themselves (uint8) for the picture."""
    h, w = hr.shape[-2:]
    latent = tae.encode(downsample(hr, 4))
    ref = to_uint8(hr)
    default_edges = window_edges(h, w, args.window, args.window // 4)
    decodes = {"taef1 + bicubic x4": (np.asarray(taef1_image(tae, latent).resize((w, h), Image.BICUBIC)),
                                      default_edges, 0.0)}
    started = time.perf_counter()
    decodes["whole image"] = (dec.decode(latent, seed=0, output="numpy")[0], default_edges,
                              time.perf_counter() - started)
    for fraction in args.overlaps:
        overlap = int(args.window * fraction) // 32 * 32
        for blend in args.blends if overlap else ["linear"]:  # no overlap: nothing to blend
            started = time.perf_counter()
            img = dec.decode(latent, seed=0, output="numpy", window=(args.window, args.window), overlap=overlap,
                             blend=blend)[0]
            decodes[f"windows, overlap {fraction:g} ({overlap} px), {blend}"] = (
                img, window_edges(h, w, args.window, overlap), time.perf_counter() - started)
    rows = [{"image": name, "size": f"{h}x{w}", "method": method, **score(img, ref, edges),
             "seconds": round(seconds, 1)} for method, (img, edges, seconds) in decodes.items()]
    return rows, {"reference": ref, **{m: img for m, (img, _, _) in decodes.items()}}


def picture(images: dict, path: Path, window: int, side: int = 256) -> None:
    """100% crops around the first inner window corner (overlap 0's edge at `window`), side by side: the reference,
    the baselines, no overlap and the default overlap in each blend."""
    keys = ["reference", "taef1 + bicubic x4", "whole image"] + [
        k for k in images if k.startswith("windows, overlap 0 ") or k.startswith("windows, overlap 0.25 ")]
    centre = window
    tiles = [images[k][centre - side // 2:centre + side // 2, centre - side // 2:centre + side // 2] for k in keys]
    Image.fromarray(np.concatenate(tiles, axis=1)).save(path, quality=92)
    print(f"{path}, left to right: " + "; ".join(keys), file=sys.stderr)


def quality(args) -> dict:
    dec = pid_sdk.Decoder.load(args.model, device="cpu")
    tae = TinyAutoencoder(args.tae_dir, "taef1")
    rows, shown, detail = [], None, -1.0
    for size in args.sizes:
        h, w = (int(v) for v in size.split("x"))
        for photo in args.photos:
            for name, hr in crops(Path(photo), args.shrink, h, w, args.crops):
                print(f"{name} {h}x{w} ...", file=sys.stderr, flush=True)
                found, images = quality_rows(dec, tae, name, hr, args)
                rows += found
                corner = hr[..., args.window - 128:args.window + 128, args.window - 128:args.window + 128]
                if corner.diff(dim=-1).abs().mean() > detail:  # the picture: the most detailed corner
                    shown, detail = images, float(corner.diff(dim=-1).abs().mean())
    if args.picture and shown is not None:
        picture(shown, Path(args.picture), args.window)
    return {"rows": rows, "summary": summary(rows)}


def summary(rows: list[dict]) -> list[dict]:
    """Per size and method: the mean PSNR, SSIM and seams, and PSNR's gap to bicubic and to the whole image."""
    out = []
    for size in dict.fromkeys(r["size"] for r in rows):
        mine = [r for r in rows if r["size"] == size]
        by = {m: [r for r in mine if r["method"] == m] for m in dict.fromkeys(r["method"] for r in mine)}
        mean = {m: {k: float(np.mean([r[k] for r in rs])) for k in ("psnr", "ssim", "seams", "grid")}
                for m, rs in by.items()}
        for m, v in mean.items():
            out.append({"size": size, "method": m, "images": len(by[m]), **{k: round(x, 3) for k, x in v.items()},
                        "vs_bicubic_db": round(v["psnr"] - mean["taef1 + bicubic x4"]["psnr"], 2),
                        "vs_whole_db": round(v["psnr"] - mean["whole image"]["psnr"], 2)})
    return out


def markdown(summary_rows: list[dict]) -> str:
    lines = ["| output | method | images | PSNR dB | vs bicubic | vs whole | SSIM | seams | grid |", "|---" * 9 + "|"]
    for r in summary_rows:
        lines.append(f"| {r['size']} | {r['method']} | {r['images']} | {r['psnr']:.2f} | {r['vs_bicubic_db']:+.2f} | "
                     f"{r['vs_whole_db']:+.2f} | {r['ssim']:.3f} | {r['seams']:.2f} | {r['grid']:.2f} |")
    return "\n".join(lines)


def memory(args) -> dict:
    rows = []
    for side in args.sizes:
        for window in [args.window] + ([None] if int(side) <= args.whole_up_to else []):
            probe = [sys.executable, __file__, "probe", "--model", args.model, "--side", str(side),
                     "--window", str(window or 0)]  # 0: the whole image
            done = subprocess.run(probe, capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.splitlines()[-1]))
            print(rows[-1], file=sys.stderr, flush=True)
    return {"rows": rows}


def probe(args) -> None:
    """One decode in this process: its peak resident memory, as one JSON line."""
    import resource

    dec = pid_sdk.Decoder.load(args.model, device="cpu")
    side = int(args.side)
    z = torch.randn(1, 16, side // 32, side // 32, generator=torch.Generator().manual_seed(0))
    idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    window = (int(args.window), int(args.window)) if args.window else None
    dec.decode(z, seed=0, window=window) if window else dec.decode(z, seed=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"output": f"{side}x{side}", "window": f"{args.window}x{args.window}" if window else "whole",
                      "peak_mib": round(peak), "over_idle_mib": round(peak - idle),
                      "seconds": round(time.perf_counter() - started, 1)}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["quality", "memory", "probe"])
    p.add_argument("--model", default=DEMO)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--photos", nargs="*", default=[])
    p.add_argument("--sizes", nargs="*", default=None, help="quality: HxW outputs; memory: square sides")
    p.add_argument("--shrink", type=int, default=2048)
    p.add_argument("--crops", type=int, default=4, help="crops per photograph and size, at most")
    p.add_argument("--overlaps", type=float, nargs="*", default=[0, 1 / 8, 1 / 4, 1 / 2])
    p.add_argument("--blends", nargs="*", default=list(BLENDS))
    p.add_argument("--whole-up-to", type=int, default=2048)
    p.add_argument("--side")
    p.add_argument("--tae-dir", default=str(SHARED_TAE_DIR))
    p.add_argument("--json")
    p.add_argument("--picture")
    args = p.parse_args(argv)
    if args.what == "probe":
        probe(args)
        return 0
    if args.what == "quality":
        args.sizes = args.sizes or ["1024x1024", "768x1024", "2048x2048"]
        result = quality(args)
        print(markdown(result["summary"]))
    else:
        args.sizes = args.sizes or ["1024", "2048", "4096"]
        result = memory(args)
    result["machine"] = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                         "torch": torch.__version__, "date": str(date.today()), "model": args.model}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
