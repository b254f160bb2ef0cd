"""Ship a training run's EMA weights as the embedded demo model (pid_sdk/data/demo-flux1, bf16 SDK artefact).

    python scripts/ship_demo.py build/demo
    python scripts/ship_demo.py /tmp/run --out /tmp/run.ship       # elsewhere (scripts/gpu_train_demo.sh)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pid_sdk.checkpoints import save_artefact  # noqa: E402
from training.trainer import load_run_ema  # noqa: E402

DEMO = ROOT / "pid_sdk" / "data" / "demo-flux1"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("run", help="a run folder of scripts/train_demo.py")
    p.add_argument("--out", default=str(DEMO), help="the artefact folder, replaced (default: the embedded model)")
    args = p.parse_args()
    run, out = Path(args.run), Path(args.out)
    cfg, model = load_run_ema(run)
    step = torch.load(run / "trainer_state.pt", weights_only=True)["step"]
    objective = json.loads((run / "train_config.json").read_text())["train"].get("objective", "flow")
    data = json.loads((run / "data.json").read_text()) if (run / "data.json").exists() else {}
    start = f" from {data['init']}" if data.get("init") else ""
    note = "" if "provenance in docs" in start else " (not DMD2-distilled; provenance in docs/quality.md)"  # once
    source = f"scripts/train_demo.py EMA after {step} steps{start}, the last ones with the {objective} objective{note}"
    save_artefact(model, cfg, out, dtype=torch.bfloat16, source=source, replace_artefact=True)  # swapped in whole
    print(f"{out}: {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
