"""`pid-sdk verify`: an engine folder's integrity without running anything (a container start-up check).

Every path the manifest names stays inside the folder, every file is present and matches its sha256, every ONNX
graph reads its external weights only from files the manifest hashes, and every plan's header names the library
and version its entry records (and, where that library is installed, passes its own header check).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pid_sdk.errors import PiDError
from pid_sdk.runtime.manifest import Entry, read_engine_manifest, verify_files, verify_weights


@dataclass
class Check:
    subject: str  # the weights, or an entry's key
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.subject}: {self.detail}"


def verify_folder(folder: str | Path) -> list[Check]:
    """One check for the shared weights and one per entry; a manifest that cannot be read raises its PiDError."""
    folder = Path(folder)
    manifest = read_engine_manifest(folder)  # paths confined here, before any file is opened
    checks = [_check("weights", lambda: f"{verify_weights(folder, manifest).name} sha256 matches")]
    for entry in manifest.entries:
        checks.append(_check(entry.key, lambda e=entry: _verify_entry(folder, e)))
    return checks


def _check(subject: str, run) -> Check:
    try:
        return Check(subject, True, run())
    except PiDError as exc:
        return Check(subject, False, str(exc).replace("\n", ";"))


def _verify_entry(folder: Path, entry: Entry) -> str:
    from pid_sdk.runtime.signatures import check_entry

    verify_files(folder, entry)
    check_entry(folder, entry)  # labels against each other; graphs and packages against their files
    if entry.backend == "onnx":
        external = _external_data(folder, entry)
        return f"{len(entry.sha256)} files, sha256 match, graphs are what the entry says" + external
    if entry.backend == "aoti":
        from pid_sdk.runtime.selection import DeviceInfo, aoti_runs_on

        runs, why = aoti_runs_on(entry, DeviceInfo.detect())
        verdict = "runnable here" if runs else f"not runnable here: {why}"
        return f"{len(entry.sha256)} packages, sha256 match, packages are what the entry says, {verdict}"
    return f"{len(entry.sha256)} plans, sha256 match, " + "; ".join(
        _plan_verdict(folder, entry, rel) for rel in sorted(entry.files.values()))


def _external_data(folder: Path, entry: Entry) -> str:
    try:
        from pid_sdk.runtime.onnxruntime_backend import check_external_data

        check_external_data(folder, entry)
    except ImportError:
        return " (external data not checked: the onnx package is not installed)"
    return ", external data confined"


def _plan_verdict(folder: Path, entry: Entry, rel: str) -> str:
    from pid_sdk.errors import CheckpointError
    from pid_sdk.runtime.tensorrt_backend import check_plan, plan_diagnostics, plan_header

    path = folder / rel
    with path.open("rb") as f:
        head = f.read(4096)
    try:
        trt = __import__(entry.backend)
    except (ImportError, OSError):  # absent, or present without its libraries
        trt = None
    problems = plan_diagnostics(trt, trt.Runtime(_quiet_logger(trt)), head) if trt else None
    if problems and "MALFORMED_ENGINE" in problems:
        raise CheckpointError(f"{entry.backend} says {rel} of {entry.key} is malformed.", received=problems,
                              fix="rebuild the entry (pid-sdk build)")
    check_plan(head, path, entry, entry.trt_version or "")  # library and version agree with the manifest
    header = plan_header(head)
    if trt is None:
        return f"{Path(rel).name} {header[0]} {'.'.join(map(str, header[1]))} (library not installed here)"
    # Without a GPU the library judges only the header's form; on a GPU, what keeps a plan off this GPU (another
    # compute capability, driver) is reported, not failed: a folder holds plans for several GPUs.
    judged = ("valid here" if problems == [] else f"well-formed; not runnable here: {', '.join(problems)}"
              if problems else _unjudged(entry))
    return f"{Path(rel).name} {header[0]} {'.'.join(map(str, header[1]))}, {judged}"


def _unjudged(entry: Entry) -> str:
    """What verify says of a well-formed plan the installed library cannot judge on this machine."""
    import torch

    if not torch.cuda.is_available():
        family = "an RTX GPU" if entry.backend == "tensorrt_rtx" else "a GPU"
        return f"well-formed; needs {family} of sm {', '.join(map(str, entry.sm))} to run"
    return "well-formed (the library cannot judge it before loading)"


def _quiet_logger(trt):
    class Quiet(trt.ILogger):  # the header check logs a fatal-level line on machines without a GPU
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            pass

    return Quiet()
