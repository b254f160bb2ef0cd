"""Which engine runs here: the GPU's compute capability and the installed TensorRT decide, the latent picks the bucket.

Everything is a function of a `DeviceInfo`, so the choice can be checked for any GPU without that GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pid_sdk.errors import ConfigError
from pid_sdk.runtime.manifest import Entry, Manifest

TARGETS = {  # build-matrix target -> (backend, compute capabilities x10)
    "rtx5090": ("tensorrt_rtx", (120,)),
    "rtx5090-trt": ("tensorrt", (120,)),
    "rtx4090": ("tensorrt_rtx", (89,)),
    "h100": ("tensorrt", (90,)),
    "h200": ("tensorrt", (90,)),
    "gb200": ("tensorrt", (100,)),
}


@dataclass(frozen=True)
class DeviceInfo:
    sm: int | None  # compute capability x10 (90 = H100), None without a CUDA GPU
    tensorrt: str | None = None  # installed `tensorrt` version
    tensorrt_rtx: str | None = None  # installed `tensorrt_rtx` version
    name: str = ""

    @classmethod
    def detect(cls) -> "DeviceInfo":
        sm, name = None, "cpu"
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            sm, name = 10 * major + minor, torch.cuda.get_device_name()
        return cls(sm, _version("tensorrt"), _version("tensorrt_rtx"), name)

    def runtime_version(self, backend: str) -> str | None:
        return self.tensorrt if backend == "tensorrt" else self.tensorrt_rtx


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except (ImportError, OSError):  # absent, or present without its libraries
        return None


def runs_on(entry: Entry, device: DeviceInfo) -> tuple[bool, str]:
    """Whether a TensorRT / TensorRT-RTX entry runs on the device, and why not."""
    if device.sm is None:
        return False, "no CUDA GPU"
    installed = device.runtime_version(entry.backend)
    if installed is None:
        return False, f"{entry.backend} is not installed"
    if not covers(entry.backend, entry.sm, entry.hardware_compatibility, device.sm):
        return False, f"built for sm {list(entry.sm)} ({_level(entry)}), this GPU is sm {device.sm}"
    if not version_runs(entry.trt_version or "", installed, entry.version_compatible, entry.backend):
        rule = "a later release of the same major, or 8 -> 10, 10 -> 11" if entry.version_compatible \
            else "exactly the same"
        return False, f"built with {entry.backend} {entry.trt_version}, installed {installed} (needs {rule} version)"
    return True, ""


def covers(backend: str, built_sm: tuple[int, ...], level: str, sm: int) -> bool:
    """Whether a plan built for `built_sm` at hardware-compatibility `level` runs on a GPU of compute capability
    `sm`. TensorRT-RTX plans run on the compute capabilities they were compiled for, whatever the level; TensorRT
    plans on the GPU they were built on (same compute capability), or on any Ampere or newer GPU (ampere_plus)."""
    if backend == "tensorrt" and level == "ampere_plus":
        return sm >= 80 and all(s >= 80 for s in built_sm)
    return sm in built_sm


def _level(entry: Entry) -> str:
    if entry.backend == "tensorrt_rtx":
        return "TensorRT-RTX"
    return f"hardware compatibility {entry.hardware_compatibility}"


# NVIDIA's documented version compatibility (TensorRT 11.4 support matrix, "Engine Portability"): a plan built with
# VERSION_COMPATIBLE (TensorRT 8.6 and later) runs on its own release and later ones of the same major version, and
# across major versions only 8 -> 10 and 10 -> 11. Every other plan runs on exactly the release that built it.
VERSION_COMPATIBLE_SINCE = (8, 6, 0)
ACROSS_MAJORS = {(8, 10), (10, 11)}


def version_runs(built: str, installed: str, version_compatible: bool, backend: str = "tensorrt") -> bool:
    """Whether a plan built by release `built` runs on the installed release (the rule above; TensorRT-RTX plans
    run on their own release only, whatever their flags). Where the library is installed its own validity check
    (`get_engine_validity`) has the last word; this rule serves selection and hosts without it."""
    b, have = _release(built), _release(installed)
    if b is None or have is None:
        return False
    if not version_compatible or backend == "tensorrt_rtx":
        return have == b
    if b < VERSION_COMPATIBLE_SINCE or have < b:
        return False
    return have[0] == b[0] or (b[0], have[0]) in ACROSS_MAJORS


def _release(version: str) -> tuple[int, int, int] | None:
    try:
        parts = tuple(int(p) for p in str(version).split(".")[:3])
    except ValueError:
        return None
    return (parts + (0, 0, 0))[:3] if parts else None


# Which manifest entries each runtime backend runs.
ENTRY_KINDS = {"tensorrt": ("tensorrt", "tensorrt_rtx"), "onnxruntime": ("onnx",), "aoti": ("aoti",)}


def aoti_runs_on(entry: Entry, device: DeviceInfo) -> tuple[bool, str]:
    """AOTInductor packages run on the device they were compiled for, with the torch release that compiled them
    (same major.minor: the packages call into libtorch's internal ABI)."""
    if entry.target == "cuda" and device.sm is None:
        return False, "compiled for CUDA, and this machine has no CUDA GPU"
    if torch_minor(entry.torch_version or "") != torch_minor(torch.__version__):
        return False, f"compiled by torch {entry.torch_version}, this is torch {torch.__version__}"
    return True, ""


def aoti_device(device: DeviceInfo) -> str:
    """The device AOTInductor decodes run on here: the GPU when there is one."""
    return "cpu" if device.sm is None else "cuda"


def torch_minor(version: str) -> str:
    """"2.13.0+cpu" -> "2.13": the release an AOTInductor package is bound to."""
    return ".".join(version.split("+")[0].split(".")[:2])


def entry_runs(entry: Entry, device: DeviceInfo, provider: str = "CPUExecutionProvider") -> tuple[bool, str]:
    """Whether this machine runs the entry (on `provider` for ONNX graphs), and why not."""
    if entry.backend == "onnx":
        return onnx_runs_on(entry, provider)
    if entry.backend == "aoti":
        return aoti_runs_on(entry, device)
    return runs_on(entry, device)


def select_entry(manifest: Manifest, folder: str, backend: str, bucket: tuple[int, int], batch: int,
                 device: DeviceInfo, provider: str = "CPUExecutionProvider", precision: str | None = None) -> Entry:
    """The entry for this bucket, batch and backend (and `precision`, when given) that runs here (on `provider` for
    ONNX Runtime); a PiDError naming what is missing otherwise."""
    same_shape = [e for e in manifest.entries if e.bucket == bucket and e.batch == batch]
    candidates = [e for e in same_shape if e.backend in ENTRY_KINDS[backend] and precision in (None, e.precision)]
    reasons = []
    order = PRECISION_ORDER[backend]
    for e in sorted(candidates, key=lambda e: _preference(e, order, device)):
        ok, why = entry_runs(e, device, provider)
        if ok:
            return e
        reasons.append(f"{e.key}: {why}")
    raise ConfigError(
        f"No {backend} engine for a {bucket[0]}x{bucket[1]} output at batch {batch} runs on this machine.",
        received="; ".join(reasons) or f"entries: {[e.key for e in manifest.entries] or 'none'}",
        expected=f"a {backend} entry for {bucket[0]}x{bucket[1]}, batch {batch}"
        + (f", precision {precision}" if precision else "") + _runs_here(backend, device, provider),
        fix=build_command(folder, backend, bucket, batch, device, provider),
    )


def _preference(entry: Entry, order: tuple[str, ...], device: DeviceInfo) -> tuple[bool, int, bool]:
    """AOTInductor packages of this machine's device first (CUDA ones on a GPU), then the precision order, then
    attention in the graph's own precision before a variant with a reduced-precision attention."""
    other_device = entry.backend == "aoti" and entry.target != aoti_device(device)
    rank = order.index(entry.precision) if entry.precision in order else len(order)
    return other_device, rank, entry.attention_dtype is not None


def _runs_here(backend: str, device: DeviceInfo, provider: str) -> str:
    if backend == "tensorrt":
        return f", sm {device.sm}, {device.runtime_version('tensorrt') or device.runtime_version('tensorrt_rtx')}"
    if backend == "aoti":
        return f" compiled by torch {torch_minor(torch.__version__)}.x"
    return f" that {provider} runs ({', '.join(ORT_PRECISIONS.get(provider, ()))})"


# What each ONNX Runtime provider runs. CPU: measured (onnxruntime 1.32 has no bf16 kernels: "NOT_IMPLEMENTED
# ... Add(14)"); CUDA: ONNX Runtime's float and half kernels, bf16 not claimed; TensorRT: every precision.
ORT_PRECISIONS = {
    "CPUExecutionProvider": ("fp32", "fp8-fp32", "fp16"),
    "CUDAExecutionProvider": ("fp32", "fp8-fp32", "fp16"),
    "TensorrtExecutionProvider": ("fp32", "fp8-fp32", "fp16", "bf16", "fp8"),
}
# Precisions whose graph `compare` can still check on a provider without their kernels: its fp32 twin (upcast.py).
TWIN_PRECISIONS = ("bf16", "fp8")


def onnx_runs_on(entry: Entry, provider: str) -> tuple[bool, str]:
    runs = ORT_PRECISIONS.get(provider, ORT_PRECISIONS["CPUExecutionProvider"])
    if entry.precision in runs:
        return True, ""
    return False, f"{provider} has no {entry.precision} kernels (it runs {', '.join(runs)})"


# TensorRT: the fastest first. ONNX Runtime: what its CPU provider runs first (it has no bf16 kernels).
PRECISION_ORDER = {"tensorrt": ("fp8", "bf16", "fp16", "fp32"),
                   "onnxruntime": ("fp32", "fp8-fp32", "fp16", "bf16", "fp8"), "aoti": ("fp32", "bf16")}


def build_command(folder: str, backend: str, bucket: tuple[int, int], batch: int, device: DeviceInfo,
                  provider: str = "CPUExecutionProvider") -> str:
    size = f"{bucket[0]}x{bucket[1]}"
    export = f"pid-sdk export {folder} --size {size} --batch {batch}"
    if backend == "aoti":
        return f"{export} --format aoti --device {aoti_device(device)}"
    if backend != "tensorrt":
        precision = ORT_PRECISIONS.get(provider, ("fp32",))[0]
        return f"{export} --precision {precision}"
    if device.sm is None:
        return ("TensorRT engines need a CUDA GPU and this machine has none: decode here with backend='onnxruntime' "
                "or 'pytorch'; build engines on the GPU host (pid-sdk build --target ...)")
    target = next((t for t, (_, sms) in TARGETS.items() if device.sm in sms), f"sm{device.sm}")
    return f"{export} && pid-sdk build {folder} --target {target} --size {size} --batch {batch}"
