"""Ship a training run's EMA weights as the embedded demo model (pid_sdk/data/demo-flux1, bf16 SDK artefact).

    python scripts/ship_demo.py build/demo
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
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
    args = p.parse_args()
    cfg, model = load_run_ema(args.run)
    step = torch.load(Path(args.run) / "trainer_state.pt", weights_only=True)["step"]
    objective = json.loads((Path(args.run) / "train_config.json").read_text())["train"].get("objective", "flow")
    source = (f"scripts/train_demo.py EMA after {step} steps, the last ones with the {objective} objective "
              "(not DMD2-distilled; provenance in docs/quality.md)")
    with tempfile.TemporaryDirectory(dir=DEMO.parent) as tmp:
        save_artefact(model, cfg, Path(tmp) / "demo", dtype=torch.bfloat16, source=source)
        shutil.rmtree(DEMO)
        (Path(tmp) / "demo").rename(DEMO)
    print(f"{DEMO}: {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
