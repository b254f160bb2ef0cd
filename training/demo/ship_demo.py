"""Ship a training run's EMA weights as the embedded demo model (pid_sdk/data/demo-flux1, bf16 SDK artefact).

    python training/demo/ship_demo.py build/demo
    python training/demo/ship_demo.py /tmp/run --out /tmp/run.ship       # elsewhere (training/demo/gpu_train_demo.sh)
    python training/demo/ship_demo.py build/a build/b                     # the mean of two runs' EMA weights
    python training/demo/ship_demo.py build/dmd                           # a `pid-sdk distill` run's DMD2 student
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pid_sdk.checkpoints import load_artefact, save_artefact  # noqa: E402
from pid_sdk.config import PiDConfig  # noqa: E402
from training.distill import is_distill_folder  # noqa: E402
from training.trainer import load_run_ema  # noqa: E402

DEMO = ROOT / "pid_sdk" / "data" / "demo-flux1"


def run_facts(run: Path) -> tuple[int, str, str]:
    """A run's step count, the weights it started from ('' for none) and its last objective."""
    step = torch.load(run / "trainer_state.pt", weights_only=True)["step"]
    objective = json.loads((run / "train_config.json").read_text())["train"].get("objective", "flow")
    data = json.loads((run / "data.json").read_text()) if (run / "data.json").exists() else {}
    return step, data.get("init") or "", objective


def describe(runs: list[Path]) -> str:
    facts = [run_facts(run) for run in runs]
    steps = " and ".join(str(step) for step, _, _ in facts)
    inits = list(dict.fromkeys(init for _, init, _ in facts))
    objectives = " and ".join(dict.fromkeys(objective for _, _, objective in facts))
    start = f" from {' and '.join(inits)}" if any(inits) else ""
    note = "" if "provenance in docs" in start else " (not DMD2-distilled; provenance in docs/quality.md)"  # once
    what = "EMA" if len(runs) == 1 else f"mean of the EMA weights of {len(runs)} runs,"
    last = f"the last ones with the {objectives} objective"
    return f"training/demo/train_demo.py {what} after {steps} steps{start}, {last}{note}"


def mean_of_runs(runs: list[Path]) -> tuple[PiDConfig, nn.Module]:
    """The runs' EMA weights averaged in float32 (a weight average of fine-tunes of one starting model)."""
    loaded = [load_run_ema(run) for run in runs]
    cfg, model = loaded[0]
    for run, (other, _) in zip(runs[1:], loaded[1:]):
        if other != cfg:
            raise SystemExit(f"{run} trains another network than {runs[0]}; only runs of one config can be averaged")
    states = [m.state_dict() for _, m in loaded]
    model.load_state_dict({k: sum(s[k].float() for s in states) / len(states) for k in states[0]})
    return cfg, model


def student_of(run: Path, others: int) -> tuple[PiDConfig, nn.Module, str]:
    """A `pid-sdk distill` run's student (its float32 artefact in RUN/student) and the source it records."""
    if others:
        raise SystemExit(f"{run} is a distillation run: ship its student alone, not in a mean with {others} more")
    student = load_artefact(run / "student")
    return student.config, student.model, student.manifest["source"]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+", help="run folders of training/demo/train_demo.py (several are averaged), or one "
                                           "`pid-sdk distill` run folder (its student)")
    p.add_argument("--out", default=str(DEMO), help="the artefact folder, replaced (default: the embedded model)")
    args = p.parse_args()
    runs, out = [Path(r) for r in args.runs], Path(args.out)
    distilled = [run for run in runs if is_distill_folder(run)]
    if distilled:
        cfg, model, source = student_of(distilled[0], others=len(runs) - 1)
    else:
        cfg, model = mean_of_runs(runs)
        source = describe(runs)
    save_artefact(model, cfg, out, dtype=torch.bfloat16, source=source, replace_artefact=True)  # swapped in whole
    print(f"{out}: {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
