"""Mutation testing of the modules whose mistakes make wrong images or unsafe loads: how many of mutmut's mutants
of each module the tests kill, and which survive.

    .venv/bin/python scripts/mutation.py                         # every module below, ~40 minutes on 2 cores
    .venv/bin/python scripts/mutation.py pid_sdk/sampling.py     # one module
    .venv/bin/python scripts/mutation.py --out docs/results/DATE-cpu-mutation.json

Each module runs in a fresh copy of the tree (mutmut writes its mutants beside the sources), against the unit tests
that guard it (fast files: mutmut runs them once per mutant). A surviving mutant either gets a test or is listed in
EQUIVALENT with the reason it cannot change a result (or in OUTSIDE: killed by a test mutmut cannot run; or in
GPU_ONLY: a survivor only a GPU run could kill, with why, reported apart and never counted as killed). Needs
`pip install mutmut==3.8.1` (not a test dependency: the whole run takes longer than the suite, so CI does not run
it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY = ("pid_sdk", "tests", "export", "training", "bench", "samples", "engines")
# module -> the tests that guard it; functions: where only part of a module is in scope (checkpoints' key mapping)
MODULES: dict[str, dict] = {
    "pid_sdk/sampling.py": {"tests": ["tests/test_sampling.py"]},
    "pid_sdk/latents.py": {"tests": ["tests/test_latents.py"]},
    "pid_sdk/inputs.py": {"tests": ["tests/test_inputs.py"]},
    "pid_sdk/compare.py": {"tests": ["tests/test_compare.py"], "exported_once": True},
    "pid_sdk/buckets.py": {"tests": ["tests/test_buckets.py"]},
    "pid_sdk/runtime/selection.py": {"tests": ["tests/test_selection.py"]},
    "pid_sdk/runtime/manifest.py": {"tests": ["tests/test_manifest.py"]},
    "pid_sdk/runtime/integrity.py": {"tests": ["tests/test_integrity.py", "tests/test_signatures.py"],
                                     "exported_once": True},
    "pid_sdk/latent_files.py": {"tests": ["tests/test_latent_files.py"]},
    "pid_sdk/checkpoints.py": {"tests": ["tests/test_checkpoints.py"],
                               "functions": ["canonical_state_dict", "_strip_prefix", "_merge_adaln", "infer_config",
                                             "_count", "_infer_backbone", "_mlp_ratio", "_infer_adapter",
                                             "_space_from_hint", "_same_network", "_name_after_preset",
                                             "key_report"]},
}
# Mutants that survive because they cannot change a result, with the reason (module-relative mutant name -> why).
_NPY_HEADER = "numpy's own default bound is 10000 bytes, the one passed; one byte more changes no file's fate"
_NPY_COPY = "the array is copied out either way (np.array): mapping it or reading it gives the same tensor"
_NPY_PICKLE = "an object array is refused by its header (_check_meta) before np.load runs: allow_pickle is never read"
_QUIET = "the block only loads a header-checked float array: no warning of another category is raised there"
_TRUNCATION = "a message cut one character later: no refusal changes, and no message is that long"
_TEMP_NAME = "the temporary file's name is never seen: it is renamed over manifest.json as soon as it is written"
_MARKER = "the format marker sits in the manifest's first line; reading more of the bounded file changes no answer"
_URL = "only each error's location and message are read; include_url adds another key"
_NO_ROOT_ERROR = ("unreachable: a manifest that is not an object is refused before the schema, so every schema "
                  "error has a location")
_BROADCAST = "[C, 1, 1] and [1, C, 1, 1] (or [1, 1, 1, 1] and a scalar) broadcast alike against [B, C, H, W]"
_PAD = ("a release is read from one to three numbers (an empty one is refused by int('')), so the padding's "
        "third element and a fourth number are never kept")
_RTX_VERSION = "runtime_version answers tensorrt_rtx for every backend name but 'tensorrt'"
_UNREADABLE = "'' and 'XXXX' are both unreadable releases: the same refusal"
_CPU_FIRST = "every provider's first precision, and the fallback's, is fp32: the same command"
_RTX_RULE = ("TensorRT-RTX releases are 1.x, below 8.6, before which the TensorRT rule also asks for the same "
             "release: the same verdict")
_SEL = "pid_sdk/runtime/selection.py:x_"
_LONG_DOUBLE = "long double is 12 or 16 bytes and no float dtype has 9 to 11: refused at > 9 as at > 8"
_NATIVE = "newbyteorder('=') of a native dtype is the same dtype"
_FROM_NUMPY = "only torch.from_numpy runs in the block; its one warning is the read-only UserWarning"
_ON_ITS_DEVICE = ("differs only for a tensor already on a GPU, which the decode moves to its device either way; on "
                  "the CPU the same tensor")
_SAME_SHAPE = "z[:2] and z[:1] have the same shape after the batch dimension"
_INF = "float('INF') is float('inf')"
_INP = "pid_sdk/inputs.py:x_"
_OWN_SPACE = ("a latent space the decoder accepts has the decoder's channels and cell size (check_latent refuses "
              "others), so the decoder's own space builds the same step and output size")
_CMP = "pid_sdk/compare.py:x_"
_LAST_TWO = "latents are 4-D here (check_latent): shape[2:] is shape[-2:]"
_HEAD = "the header check reads a plan's first bytes: a longer read changes no verdict"
_YES_NO = ("is_engine_dir only answers yes or no: the words of its refusals are never shown, and it reads 4096 "
           "bytes whatever the bound")
EQUIVALENT: dict[str, str] = {
    **{f"pid_sdk/runtime/integrity.py:x__plan_verdict__mutmut_{n}": _HEAD for n in (7, 8)},
    "pid_sdk/runtime/integrity.py:x__plan_verdict__mutmut_44": "unreachable: the schema requires a plan's trt_version",
    **{f"pid_sdk/runtime/manifest.py:x_is_engine_dir__mutmut_{n}": _YES_NO for n in (3, 8, 9, 10)},
    "pid_sdk/runtime/manifest.py:x_read_engine_manifest__mutmut_23": "read_json refuses the same oversized manifest "
                                                                     "by its own bound",
    f"{_CMP}compare__mutmut_26": "a sampling stride one element longer: a sample of the same error distribution",
    **{f"{_CMP}_step_fn__mutmut_{n}": _OWN_SPACE for n in (4, 5, 6, 12, 14)},
    **{f"{_CMP}run_parity__mutmut_{n}": _OWN_SPACE for n in (53, 55, 58, 59, 60)},
    f"{_CMP}_step_fn__mutmut_15": _LAST_TWO,
    f"{_CMP}run_parity__mutmut_56": _LAST_TWO,
    **{f"{_CMP}compare_folder__mutmut_{n}": ("TorchRuntime autocasts for 'bf16' alone, and the reference's precision "
                                             "is reported nowhere: 'XXfp32XX' runs as fp32")
       for n in (106, 107)},
    f"{_CMP}compare_folder__mutmut_65": "the log function's return value is never read: None and 0 alike",
    f"{_INP}_native_array__mutmut_53": _LONG_DOUBLE,
    f"{_INP}_native_array__mutmut_89": _NATIVE,
    **{f"{_INP}as_float_tensor__mutmut_{n}": _FROM_NUMPY for n in (7, 9)},
    **{f"{_INP}{name}": _TRUNCATION for name in (
        "check_callback__mutmut_14", "check_choice__mutmut_13", "check_flag__mutmut_11", "check_guidance__mutmut_23",
        "check_int__mutmut_32", "check_sigma__mutmut_36", "check_sigma__mutmut_97", "check_stats__mutmut_20")},
    **{f"{_INP}check_latent__mutmut_{n}": _ON_ITS_DEVICE for n in (20, 22)},
    **{f"{_INP}check_text_embeddings__mutmut_{n}": _ON_ITS_DEVICE for n in (49, 51)},
    f"{_INP}check_latent__mutmut_44": _SAME_SHAPE,
    f"{_INP}check_sigma__mutmut_6": _INF,
    **{f"{_SEL}_release__mutmut_{n}": _PAD for n in (7, 9, 13)},
    **{f"{_SEL}_runs_here__mutmut_{n}": _RTX_VERSION for n in (8, 9, 10)},
    f"{_SEL}aoti_runs_on__mutmut_12": _UNREADABLE,
    f"{_SEL}runs_on__mutmut_32": _UNREADABLE,
    **{f"{_SEL}build_command__mutmut_{n}": _CPU_FIRST for n in (1, 2, 3, 16)},
    **{f"{_SEL}select_entry__mutmut_{n}": _CPU_FIRST for n in (67, 73)},
    **{f"{_SEL}runs_on__mutmut_{n}": _RTX_RULE for n in (26, 30)},
    **{f"{_SEL}version_runs__mutmut_{n}": _RTX_RULE for n in (1, 2)},
    "pid_sdk/latents.py:x__channel__mutmut_9": _BROADCAST,
    "pid_sdk/latents.py:x__channel__mutmut_14": _BROADCAST,
    "pid_sdk/latents.py:xǁLatentSpaceǁnormalize__mutmut_52": _BROADCAST,
    "pid_sdk/latents.py:xǁLatentSpaceǁnormalize__mutmut_67": _BROADCAST,
    "pid_sdk/latent_files.py:x__several__mutmut_10": _TRUNCATION,
    "pid_sdk/latent_files.py:x_read_latent_file__mutmut_73": _TRUNCATION,
    "pid_sdk/runtime/manifest.py:x__first_error__mutmut_19": _TRUNCATION,
    "pid_sdk/runtime/manifest.py:x_read_engine_manifest__mutmut_63": _TRUNCATION,
    "pid_sdk/runtime/manifest.py:x_verify_weights__mutmut_26": _TRUNCATION,
    "pid_sdk/runtime/manifest.py:x__first_error__mutmut_3": _URL,
    "pid_sdk/runtime/manifest.py:x__first_error__mutmut_15": _NO_ROOT_ERROR,
    "pid_sdk/runtime/manifest.py:x__first_error__mutmut_16": _NO_ROOT_ERROR,
    "pid_sdk/runtime/manifest.py:x_is_engine_dir__mutmut_12": _MARKER,
    "pid_sdk/runtime/manifest.py:x_is_engine_dir__mutmut_13": _MARKER,
    **{f"pid_sdk/runtime/manifest.py:x_write_manifest__mutmut_{n}": _TEMP_NAME
       for n in (9, 10, 12, 13, 15, 16, 17, 18)},
    "pid_sdk/latent_files.py:x__npy__mutmut_16": _NPY_HEADER,
    "pid_sdk/latent_files.py:x__npy__mutmut_17": _NPY_HEADER,
    "pid_sdk/latent_files.py:x__npy__mutmut_56": _QUIET,
    "pid_sdk/latent_files.py:x__npy__mutmut_58": _QUIET,
    "pid_sdk/latent_files.py:x__npy__mutmut_63": _NPY_COPY,
    "pid_sdk/latent_files.py:x__npy__mutmut_66": _NPY_COPY,
    "pid_sdk/latent_files.py:x__npy__mutmut_64": _NPY_PICKLE,
    "pid_sdk/latent_files.py:x__npy__mutmut_67": _NPY_PICKLE,
    "pid_sdk/latent_files.py:x__npy__mutmut_70": _NPY_PICKLE,
    "pid_sdk/checkpoints.py:x__infer_adapter__mutmut_49": (
        "one candidate interval more, d + 1, gives ceil(d / (d + 1)) = 1 gate, which d already gave (d >= 1: "
        "check_read_shapes asks for patch_blocks.0)"),
    "pid_sdk/checkpoints.py:x_canonical_state_dict__mutmut_64": (
        "the width only merges halves of a file without a usable pixel_embedder, which check_read_shapes then refuses "
        "whatever the merge gave (width 1 divides every size)"),
    **{f"pid_sdk/checkpoints.py:x_infer_config__mutmut_{n}": ("'' and 'XXXX' hold none of the words a hint or source "
                                                             "is read for (2kto4k, official-pid, space names)")
       for n in (1, 2)},
}
# Mutants a test kills that cannot run under mutmut (the test's reason for skipping there), with that test's name.
OUTSIDE: dict[str, str] = {
    f"pid_sdk/inputs.py:x_check_latent__mutmut_{n}": "tests/test_inputs.py::test_decoding_another_spaces_latents_"
                                                      "warns_at_the_callers_line (stacklevel)" for n in (63, 65, 66)}
# Mutants only a GPU (or a backend the CPU suite does not compare) can kill, with why: survivors, reported apart.
_ON_CPU = "decoder.device is the CPU, where the step's input already is: .to(device) and no .to() are the same"
_READ_FOR_OTHERS = ("a pinned ONNX entry reads neither: the manifest and device serve to select an unpinned entry, "
                    "place AOTInductor packages and refit stripped TensorRT plans (a GPU compare)")
_UPCAST_DEFAULT = ("every ONNX Runtime backend has `upcast`; the default is read for TensorRT and AOTInductor "
                   "backends, which the CPU suite does not compare")
_REFERENCE_CPU = "torch_runtime's own default precision is fp32 on a CPU (bf16 on a GPU, where it would kill)"
_BARE_SOURCE = ("the folder's path is shown only when its configuration has no adapter, which no export writes; "
                "a crafted folder of bare-PixelDiT weights would show it")
GPU_ONLY: dict[str, str] = {
    **{f"{_CMP}_step_fn__mutmut_{n}": _ON_CPU for n in (42, 43, 44)},
    **{f"{_CMP}_compare_entry__mutmut_{n}": _READ_FOR_OTHERS for n in (20, 22)},
    **{f"{_CMP}_compare_entry__mutmut_{n}": _UPCAST_DEFAULT for n in (93, 96, 99)},
    **{f"{_CMP}compare_folder__mutmut_{n}": _REFERENCE_CPU for n in (101, 105)},
    **{f"{_CMP}compare_folder__mutmut_{n}": _BARE_SOURCE for n in (94, 97, 108)},
}
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
        # mutmut forks a warmed-up process per mutant: torch's thread pool does not survive a fork, so one thread
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PID_SDK_MUTATION="1")
        if spec.get("exported_once"):  # the module cannot change an export: one for every mutant's tests
            env["PID_SDK_TINY_ENGINES"] = str(_export_tiny(work / "tiny-engines", "64, 64", ["fp32"]))
            env["PID_SDK_TINY_BF16_ENGINES"] = str(_export_tiny(work / "tiny-bf16-engines", "64, 96", ["fp32", "bf16"]))
        run = subprocess.run([str(Path(sys.executable).with_name("mutmut")), "run", "--max-children", "2"], cwd=work,
                             capture_output=True, text=True, env=env)
        meta = work / "mutants" / f"{module}.meta"
        if not meta.exists():
            raise SystemExit(f"mutmut did not run on {module}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        prefix = module.removesuffix(".py").replace("/", ".") + ".x"
        wanted = spec.get("functions")
        if wanted:
            codes = {k: v for k, v in codes.items() if k.removeprefix(prefix + "_").split("__mutmut_")[0] in wanted}
        survivors = sorted(k.removeprefix(module.removesuffix(".py").replace("/", ".") + ".")
                           for k, v in codes.items() if v == 0)
        diffs = {name: _show(work, f"{prefix[:-1]}{name}") for name in survivors}
    from mutmut.stats import status_by_exit_code

    equivalent = [s for s in survivors if f"{module}:{s}" in EQUIVALENT]
    outside = [s for s in survivors if f"{module}:{s}" in OUTSIDE]
    status = Counter(status_by_exit_code[v] for v in codes.values())
    killed, total = status["killed"], len(codes)
    score = (killed + len(equivalent) + len(outside)) / total if total else 1.0  # a timeout is not a kill
    others = {k: n for k, n in status.items() if k not in ("killed", "survived")}
    gpu_only = [s for s in survivors if f"{module}:{s}" in GPU_ONLY]
    surviving = [s for s in survivors if s not in equivalent and s not in outside and s not in gpu_only]
    log(f"{module}: {killed} of {total} killed, {len(equivalent)} equivalent, {len(outside)} killed outside mutmut, "
        f"{len(gpu_only)} surviving on the CPU only (reasons stated), {len(surviving)} surviving"
        f"{f', other: {others}' if others else ''}: {score:.1%}")
    for name in surviving:
            log(f"--- {module} {name}\n{diffs[name]}")
    return {"mutants": total, "killed": killed, "other": others,
            "equivalent": {s: EQUIVALENT[f"{module}:{s}"] for s in equivalent},
            "killed_outside_mutmut": {s: OUTSIDE[f"{module}:{s}"] for s in outside},
            "surviving_on_cpu_only": {s: GPU_ONLY[f"{module}:{s}"] for s in gpu_only},
            "surviving": surviving, "score": score, "tests": tests,
            "diffs": diffs}  # every survivor's, the equivalent and GPU-only ones too: their reasons can be checked


def _export_tiny(folder: Path, size: str, precisions: list[str]) -> Path:
    """What tests/conftest.py's tiny_engine_folder / tiny_bf16_engine_folder export, done once."""
    subprocess.run([sys.executable, "-c", "from export.export_folder import export_engine_set\n"
                    "from pid_sdk.buckets import Bucket\n"
                    f"export_engine_set({str(folder)!r}, preset='tiny', sizes=[Bucket({size})], "
                    f"precisions={precisions!r}, log=print)"],
                   cwd=ROOT, check=True, capture_output=True)
    return folder


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
    results = {m: run_module(m, MODULES[m], lambda line: print(line, flush=True)) for m in args.modules}
    report = {"date": date.today().isoformat(),
              "machine": f"{platform.machine()}, Python {platform.python_version()}, mutmut 3.8.1",
              "goal": GOAL, "modules": results}
    if args.out:  # modules run before into the same file are kept: each keeps the date it was run
        earlier = json.loads(args.out.read_text())["modules"] if args.out.exists() else {}
        for result in results.values():
            result["date"] = report["date"]
        report["modules"] = {**earlier, **results}
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(r["score"] >= GOAL for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
