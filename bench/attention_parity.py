"""What the attention settings of issue 32 cost a decode, per step and per image, on any machine.

    python bench/attention_parity.py --json out.json

- FP8 attention: cuDNN's FP8 SDPA arithmetic (E4M3 q, k, v with per-tensor scales, float32 softmax, E4M3
  probabilities, bf16 out) run in PyTorch on the MM-DiT attention (`reference_fp8_sdpa`), against the bf16 decoder,
  judged by the fp8 row; on seeded random weights and on the embedded demo model with the sample latent.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pid_sdk import DEMO_MODEL, Decoder, Speed  # noqa: E402
from pid_sdk.compare import run_parity  # noqa: E402
from pid_sdk.config import get_preset  # noqa: E402
from pid_sdk.latents import get_latent_space  # noqa: E402
from pid_sdk.runtime.fp8_attention import reference_fp8_sdpa  # noqa: E402

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


def fp8_attention(load, z) -> dict:
    fp8 = load("bf16")
    fp8.runtime.model.set_joint_sdpa(reference_fp8_sdpa)
    return summary(run_parity(load("bf16"), fp8, z, precision="fp8"))


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
                               ("split attention", split_attention)):
            rows.append({"model": name, "setting": setting, **check(load, z)})
            print(f"{setting}, {name}:", *rows[-1]["printed"], sep="\n  ", flush=True)
    if args.json:
        meta = {"date": str(date.today()), "torch": torch.__version__, "device": "cpu"}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
