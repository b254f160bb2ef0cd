"""What the attention settings of issue 32 cost a decode, per step and per image, on any machine.

    python bench/attention_parity.py --json out.json

- FP8 attention: cuDNN's FP8 SDPA arithmetic (E4M3 q, k, v with per-tensor scales, float32 softmax, E4M3
  probabilities, bf16 out) run in PyTorch on the MM-DiT attention (`reference_fp8_sdpa`), against the bf16 decoder,
  judged by the fp8 row; on seeded random weights and on the embedded demo model with the sample latent.
- FP8 attention with per-head scales: the same arithmetic with one scale per head of v (exact for any kernel: the
  output is rescaled per head afterwards) and per head of q and k balanced so that each head's product of scales is
  one number, the single descale cuDNN's kernel takes. Measured to decide whether the kernel's per-tensor scales
  cost anything; also on synthetic attention whose heads span three decades of magnitude (`head_skew`).
- Split attention (`Speed(split_attention=True)`): against the single call, in fp32 (judged by the fp32 row).

The GPU tests hold the cuDNN kernel to the same arithmetic (tests/test_gpu.py); this script says what it costs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import date
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pid_sdk import DEMO_MODEL, Decoder, Speed  # noqa: E402
from pid_sdk.compare import run_parity  # noqa: E402
from pid_sdk.config import get_preset  # noqa: E402
from pid_sdk.latents import get_latent_space  # noqa: E402
from pid_sdk.runtime.fp8_attention import E4M3_MAX, e4m3_softmax_times_v, reference_fp8_sdpa  # noqa: E402

RANDOM = "tiny-pid-2kto4k-v1.5"


def random_case(side: int) -> tuple:
    cfg = get_preset(RANDOM)
    space = get_latent_space(cfg.latent_space)
    h = side // (space.factor * cfg.adapter.sr_scale)
    z = torch.randn(1, space.channels, h, h, generator=torch.Generator().manual_seed(5))
    return (lambda speed: Decoder.load(preset=RANDOM, seed=3, device="cpu", speed=speed)), z


def demo_case() -> tuple:
    z = load_file(str(ROOT / "samples" / "sample_latent_flux1.safetensors"))["latent"][None]  # 512x512 out
    return (lambda speed: Decoder.load(DEMO_MODEL, device="cpu", speed=speed)), z


def fp8_attention(load, z, sdpa=reference_fp8_sdpa) -> dict:
    fp8 = load("bf16")
    fp8.runtime.model.set_joint_sdpa(sdpa)
    return summary(run_parity(load("bf16"), fp8, z, precision="fp8"))


def fp8_attention_per_head(load, z) -> dict:
    return fp8_attention(load, z, sdpa=per_head_fp8_sdpa)


def round_e4m3(x: Tensor, scale: Tensor) -> Tensor:
    return (x.float() * scale).to(torch.float8_e4m3fn).float() / scale


def per_head_fp8_sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """`reference_fp8_sdpa` with per-head scales: v's own per head; q's and k's per head with equal headroom and a
    product shared by all heads (the most the tightest head allows), so one descale undoes every head's scores."""
    amax_q, amax_k, amax_v = (t.abs().amax(dim=(-2, -1), keepdim=True).float().clamp_min(1e-12) for t in (q, k, v))
    product = (E4M3_MAX**2 / (amax_q * amax_k)).amin()
    scale_q = (product * amax_k / amax_q).sqrt()  # [B, h, 1, 1]
    q8, k8, v8 = round_e4m3(q, scale_q), round_e4m3(k, product / scale_q), round_e4m3(v, E4M3_MAX / amax_v)
    return e4m3_softmax_times_v(q8 @ k8.transpose(-2, -1) * q.shape[-1] ** -0.5, v8)  # scores [B, h, n, m]


def head_skew(heads: int = 8, tokens: int = 1024, decades: float = 3.0) -> list[dict]:
    """Attention alone on random q, k, v whose heads shrink from 1 to 10**-decades: the worst and the median head's
    relative error (Frobenius) against float32 attention, with per-tensor and with per-head scales."""
    g = torch.Generator().manual_seed(0)
    spread = torch.logspace(0, -decades, heads).view(1, heads, 1, 1)
    q, k, v = (torch.randn(1, heads, tokens, 64, generator=g) for _ in range(3))
    q, k, v = 2 * q * spread.sqrt(), 2 * k * spread.sqrt(), v * spread
    exact = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    rows = []
    for scales, sdpa in (("per tensor", reference_fp8_sdpa), ("per head", per_head_fp8_sdpa)):
        err = ((sdpa(q, k, v).float() - exact).norm(dim=(-2, -1)) / exact.norm(dim=(-2, -1))).flatten()
        rows.append({"scales": scales, "worst_head_rel": err.max().item(), "median_head_rel": err.median().item()})
    return rows


def split_attention(load, z) -> dict:
    return summary(run_parity(load(None), load(Speed(split_attention=True)), z, precision="fp32"))


def summary(report) -> dict:
    return {"passed": report.passed, "steps": [asdict(c) for c in report.steps], "image": asdict(report.image),
            "printed": str(report).splitlines()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", type=int, default=256, help="output side of the random-weight decodes")
    p.add_argument("--no-demo", dest="demo", action="store_false", help="skip the demo model (512x512)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    cases = {f"random {RANDOM} {args.side}x{args.side}": random_case(args.side)}
    if args.demo:
        cases["demo model, sample latent, 512x512"] = demo_case()
    rows = []
    for name, (load, z) in cases.items():
        for setting, check in (("fp8 attention (cuDNN arithmetic)", fp8_attention),
                               ("fp8 attention, per-head scales", fp8_attention_per_head),
                               ("split attention", split_attention)):
            rows.append({"model": name, "setting": setting, **check(load, z)})
            print(f"{setting}, {name}:", *rows[-1]["printed"], sep="\n  ", flush=True)
    skew = head_skew()
    for row in skew:
        print(f"heads spanning 3 decades, fp8 scales {row['scales']}: worst head {row['worst_head_rel']:.2e}, "
              f"median {row['median_head_rel']:.2e} relative error")
    if args.json:
        meta = {"date": str(date.today()), "torch": torch.__version__, "device": "cpu"}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows, "head_skew": skew}, indent=2))
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
