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
    except Exception:  # absent, or present without its libraries
        return None


def runs_on(entry: Entry, device: DeviceInfo) -> tuple[bool, str]:
    """Whether a TensorRT / TensorRT-RTX entry runs on the device, and why not."""
    if device.sm is None:
        return False, "no CUDA GPU"
    installed = device.runtime_version(entry.backend)
    if installed is None:
        return False, f"{entry.backend} is not installed"
    if not _sm_ok(entry, device.sm):
        return False, f"built for sm {list(entry.sm)}, this GPU is sm {device.sm}"
    if not _version_ok(entry, installed):
        return False, f"built with {entry.backend} {entry.trt_version}, installed {installed}"
    return True, ""


def _sm_ok(entry: Entry, sm: int) -> bool:
    if entry.hardware_compatibility == "ampere_plus":
        return sm >= 80
    if entry.hardware_compatibility == "same_compute_capability":
        return any(sm // 10 == s // 10 and sm >= s for s in entry.sm)
    return sm in entry.sm


def _version_ok(entry: Entry, installed: str) -> bool:
    built = (entry.trt_version or "").split(".")
    have = installed.split(".")
    if entry.version_compatible:  # a version-compatible plan runs on the same or a later release of its major
        return built[0] == have[0] and tuple(map(int, have[:2])) >= tuple(map(int, built[:2]))
    return built[:3] == have[:3]


def select_entry(manifest: Manifest, folder: str, backend: str, bucket: tuple[int, int], batch: int,
                 device: DeviceInfo) -> Entry:
    """The entry for this bucket, batch and backend that runs here; a PiDError naming what is missing otherwise."""
    same_shape = [e for e in manifest.entries if e.bucket == bucket and e.batch == batch]
    kinds = ("tensorrt", "tensorrt_rtx") if backend == "tensorrt" else ("onnx",)
    candidates = [e for e in same_shape if e.backend in kinds]
    reasons = []
    order = PRECISION_ORDER[backend]
    for e in sorted(candidates, key=lambda e: order.index(e.precision) if e.precision in order else len(order)):
        ok, why = (True, "") if e.backend == "onnx" else runs_on(e, device)
        if ok:
            return e
        reasons.append(f"{e.key}: {why}")
    raise ConfigError(
        f"No {backend} engine for a {bucket[0]}x{bucket[1]} output at batch {batch} runs on this machine.",
        received="; ".join(reasons) or f"entries: {[e.key for e in manifest.entries] or 'none'}",
        expected=f"a {backend} entry for {bucket[0]}x{bucket[1]}, batch {batch}"
        + (f", sm {device.sm}, {device.runtime_version('tensorrt') or device.runtime_version('tensorrt_rtx')}"
           if backend == "tensorrt" else ""),
        fix=build_command(folder, backend, bucket, batch, device),
    )


# TensorRT: the fastest first. ONNX Runtime: what its CPU provider runs first (it has no bf16 kernels).
PRECISION_ORDER = {"tensorrt": ("fp8", "bf16", "fp16", "fp32"),
                   "onnxruntime": ("fp32", "fp8-fp32", "fp16", "bf16", "fp8")}


def build_command(folder: str, backend: str, bucket: tuple[int, int], batch: int, device: DeviceInfo) -> str:
    size = f"{bucket[0]}x{bucket[1]}"
    export = f"pid-sdk export {folder} --size {size} --batch {batch}"
    if backend != "tensorrt":
        return export
    target = next((t for t, (_, sms) in TARGETS.items() if device.sm in sms), f"sm{device.sm}")
    return f"{export} && pid-sdk build {folder} --target {target} --size {size} --batch {batch}"
