"""Opening an engine folder: pick the backend (TensorRT -> ONNX Runtime -> PyTorch), then an entry per bucket."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor

from pid_sdk.errors import ConfigError, PiDError
from pid_sdk.runtime.manifest import Entry, Manifest, read_manifest, verify_files
from pid_sdk.runtime.selection import DeviceInfo, runs_on, select_entry

BACKENDS = ("auto", "tensorrt", "onnxruntime", "pytorch")


class EngineRuntime:
    """Graph or engine entries of one kind, opened lazily per (bucket, batch) and kept open."""

    def __init__(self, folder: Path, manifest: Manifest, kind: str, device: DeviceInfo, providers=None):
        self.folder, self.manifest, self.kind, self.info, self.providers = folder, manifest, kind, device, providers
        self.name = kind
        self.device = torch.device("cuda" if kind == "tensorrt" else "cpu")
        self.precision = "engine"
        self._open: dict[str, object] = {}
        self._arena = None  # TensorRT: one device-memory arena for every engine this decoder opens

    def entry_for(self, height: int, width: int, batch: int) -> Entry:
        return select_entry(self.manifest, str(self.folder), self.kind, (height, width), batch, self.info)

    def backend(self, *, text: Tensor, latent: Tensor, latent_sigma: Tensor, height: int, width: int):
        entry = self.entry_for(height, width, latent.shape[0])
        if entry.key not in self._open:
            verify_files(self.folder, entry)
            self._open[entry.key] = self._create(entry)
        return self._open[entry.key].prepare(text=text, latent=latent, latent_sigma=latent_sigma, height=height,
                                             width=width)

    def _create(self, entry: Entry):
        if self.kind == "onnxruntime":
            from pid_sdk.runtime.onnxruntime_backend import OnnxRuntimeBackend

            return OnnxRuntimeBackend(self.folder, entry, self.providers)
        from pid_sdk.runtime.tensorrt_backend import DeviceArena, TensorRTBackend

        source = next((e for e in self.manifest.entries if e.key == entry.source), None)
        self._arena = self._arena or DeviceArena()
        return TensorRTBackend(self.folder, entry, source, self._arena)


def open_engine_set(folder: str | Path, backend: str, device: DeviceInfo | None = None, providers=None):
    """The runtime for `backend`, or with "auto" the first that works here, warning with the reason for each skip."""
    if backend not in BACKENDS:
        raise ConfigError("Unknown backend.", received=backend, expected=", ".join(BACKENDS))
    folder = Path(folder)
    manifest = read_manifest(folder)
    device = device or DeviceInfo.detect()
    order = ("tensorrt", "onnxruntime", "pytorch") if backend == "auto" else (backend,)
    reasons = []
    for kind in order:
        try:
            runtime = _open(kind, folder, manifest, device, providers)
        except PiDError as exc:
            if backend != "auto":
                raise
            reasons.append(f"{kind}: {exc.what}")
            continue
        if reasons:
            warnings.warn(f"Falling back to {kind}: " + " | ".join(reasons), stacklevel=3)
        return manifest, runtime
    raise ConfigError(f"No backend can run the engine set {folder}.", received=" | ".join(reasons),
                      fix="install onnxruntime, or export with weights (pid-sdk export) for the PyTorch fallback")


def _open(kind: str, folder: Path, manifest: Manifest, device: DeviceInfo, providers):
    if kind == "tensorrt":
        engines = [e for e in manifest.entries if e.backend in ("tensorrt", "tensorrt_rtx")]
        if not engines:
            raise ConfigError("The engine set has no TensorRT engines.", fix=f"pid-sdk build {folder} --target ...")
        verdicts = [runs_on(e, device) for e in engines]
        if not any(ok for ok, _ in verdicts):
            raise ConfigError("No TensorRT engine of this set runs here.",
                              received="; ".join(f"{e.key}: {why}" for e, (_, why) in zip(engines, verdicts)),
                              fix=f"pid-sdk build {folder} --target <this GPU>")
        return EngineRuntime(folder, manifest, "tensorrt", device)
    if kind == "onnxruntime":
        from pid_sdk.runtime.onnxruntime_backend import import_onnxruntime

        import_onnxruntime()
        if not any(e.backend == "onnx" for e in manifest.entries):
            raise ConfigError("The engine set has no ONNX graphs.", fix=f"pid-sdk export {folder} --size HxW")
        return EngineRuntime(folder, manifest, "onnxruntime", device, providers)
    return _torch_runtime(folder, manifest)


def load_weights(folder: Path, manifest: Manifest):
    """The model from the folder's shared weights, strictly loaded into the manifest's configuration."""
    from pid_sdk.checkpoints import load_state_dict_strict, read_safetensors

    if not manifest.weights or not (folder / manifest.weights).is_file():
        raise ConfigError("The engine set carries no weights for the PyTorch fallback.",
                          fix="re-export it with pid-sdk export (weights.safetensors is written beside the graphs)")
    return load_state_dict_strict(manifest.config, read_safetensors(folder / manifest.weights))


def _torch_runtime(folder: Path, manifest: Manifest):
    from pid_sdk.runtime.torch_backend import TorchRuntime

    model = load_weights(folder, manifest)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = "bf16" if device.type == "cuda" else "fp32"
    return TorchRuntime(model.float().to(device).eval(), device, precision)
