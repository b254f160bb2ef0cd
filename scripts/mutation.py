"""Mutation testing of the modules whose mistakes make wrong images or unsafe loads: how many of mutmut's mutants
of each module the tests kill, and which survive.

    .venv/bin/python scripts/mutation.py                         # every module below, ~15 minutes on 2 cores
    .venv/bin/python scripts/mutation.py pid_sdk/sampling.py     # one module
    .venv/bin/python scripts/mutation.py --out docs/results/DATE-cpu-mutation.json

Each module runs in a fresh copy of the tree (mutmut writes its mutants beside the sources), against the unit tests
that guard it (fast files: mutmut runs them once per mutant). A surviving mutant either gets a test or is listed in
EQUIVALENT with the reason it cannot change a result. Needs `pip install mutmut==3.8.1` (not a test dependency:
CI runs the sampled subset in tests/test_mutation.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY = ("pid_sdk", "tests", "export", "training", "bench", "samples", "engines")
# module -> the tests that guard it; functions: where only part of a module is in scope (checkpoints' key mapping)
MODULES: dict[str, dict] = {
    "pid_sdk/sampling.py": {"tests": ["tests/test_sampling.py"]},
    "pid_sdk/latents.py": {"tests": ["tests/test_latents.py"]},
    "pid_sdk/inputs.py": {"tests": ["tests/test_inputs.py"]},
    "pid_sdk/compare.py": {"tests": ["tests/test_compare.py"]},
    "pid_sdk/buckets.py": {"tests": ["tests/test_buckets.py"]},
    "pid_sdk/runtime/selection.py": {"tests": ["tests/test_selection.py"]},
    "pid_sdk/runtime/manifest.py": {"tests": ["tests/test_manifest.py"]},
    "pid_sdk/runtime/integrity.py": {"tests": ["tests/test_integrity.py"]},
    "pid_sdk/latent_files.py": {"tests": ["tests/test_latent_files.py"]},
    "pid_sdk/checkpoints.py": {"tests": ["tests/test_checkpoints.py"],
                               "functions": ["canonical_state_dict", "_strip_prefix", "_merge_adaln", "infer_config",
                                             "_count", "_infer_backbone", "_mlp_ratio", "_infer_adapter",
                                             "_space_from_hint", "_same_network", "_name_after_preset",
                                             "key_report"]},
}
# Mutants that survive because they cannot change a result, with the reason (module-relative mutant name -> why).
EQUIVALENT: dict[str, str] = {}
GOAL = 0.85


def run_module(module: str, spec: dict, log) -> dict:
    with tempfile.TemporaryDirectory(prefix="pid-mutation-") as tmp:
        work = Path(tmp)
        for name in COPY:
            shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (work / "bindings").mkdir()
        shutil.copy(ROOT / "bindings" / "ctypes_abi.py", work / "bindings")
        tests = [t for t in spec["tests"] if (ROOT / t.split("::")[0]).exists()]
        (work / "pyproject.toml").write_text(
            "[tool.mutmut]\n"
            'source_paths = ["pid_sdk"]\n'
            f'only_mutate = ["{module}"]\n'
            f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
            'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]\n'
            f"also_copy = {json.dumps([n for n in COPY if n not in ('pid_sdk', 'tests')] + ['bindings'])}\n\n"
            "[tool.pytest.ini_options]\n"
            'testpaths = ["tests"]\n'
            'markers = ["gpu: a CUDA GPU", "tensorrt: TensorRT", "slow: longer"]\n')
        run = subprocess.run([str(Path(sys.executable).with_name("mutmut")), "run", "--max-children", "2"], cwd=work,
                             capture_output=True, text=True)
        meta = work / "mutants" / f"{module}.meta"
        if not meta.exists():
            raise SystemExit(f"mutmut did not run on {module}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        prefix = module.removesuffix(".py").replace("/", ".") + ".x"
        wanted = spec.get("functions")
        if wanted:
            codes = {k: v for k, v in codes.items() if k.removeprefix(prefix).split("__mutmut_")[0] in wanted}
        survivors = sorted(k.removeprefix(module.removesuffix(".py").replace("/", ".") + ".")
                           for k, v in codes.items() if v == 0)
        diffs = {name: _show(work, f"{prefix[:-1]}{name}") for name in survivors}
    equivalent = [s for s in survivors if f"{module}:{s}" in EQUIVALENT]
    killed = sum(v == 1 for v in codes.values())
    total = len(codes)
    score = (killed + len(equivalent)) / total if total else 1.0
    log(f"{module}: {killed} of {total} killed, {len(equivalent)} equivalent, {len(survivors) - len(equivalent)} "
        f"surviving: {score:.1%}")
    return {"mutants": total, "killed": killed, "equivalent": equivalent,
            "surviving": [s for s in survivors if s not in equivalent], "score": score, "tests": tests,
            "diffs": {s: d for s, d in diffs.items() if s not in equivalent}}


def _show(work: Path, name: str) -> str:
    shown = subprocess.run([str(Path(sys.executable).with_name("mutmut")), "show", name], cwd=work,
                           capture_output=True, text=True)
    return "\n".join(line for line in shown.stdout.splitlines() if line.startswith(("+", "-"))
                     and not line.startswith(("+++", "---")))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", default=list(MODULES))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    results = {m: run_module(m, MODULES[m], print) for m in args.modules}
    report = {"date": date.today().isoformat(),
              "machine": f"{platform.machine()}, Python {platform.python_version()}, mutmut 3.8.1",
              "goal": GOAL, "modules": results}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    for module, r in results.items():
        for name in r["surviving"]:
            print(f"--- {module} {name}\n{r['diffs'][name]}")
    return 0 if all(r["score"] >= GOAL for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
