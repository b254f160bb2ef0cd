"""Opening an engine folder: pick the backend (TensorRT -> ONNX Runtime -> PyTorch), then an entry per bucket."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor

from pid_sdk.errors import ConfigError, InputError, PiDError
from pid_sdk.runtime.manifest import Entry, Manifest, read_engine_manifest, verify_files, verify_weights
from pid_sdk.runtime.signatures import check_entry
from pid_sdk.runtime.selection import ENTRY_KINDS, DeviceInfo, aoti_device, build_command, runs_on, select_entry

RUNTIME_BACKENDS = ("auto", "tensorrt", "onnxruntime", "aoti", "pytorch")
FALLBACK_ORDER = ("tensorrt", "onnxruntime", "pytorch")


class EngineRuntime:
    """Graph or engine entries of one kind, opened lazily per (bucket, batch) and kept open.

    `entry` pins the runtime to one entry (parity checks run each entry on its own graph), `precision` to the
    entries of that precision; `verify=False` skips the sha256 checks (an explicit opt-out, never the default);
    `upcast` lets ONNX Runtime run a bf16 graph's fp32 twin where its provider has no bf16 kernels."""

    def __init__(self, folder: Path, manifest: Manifest, kind: str, device: DeviceInfo, providers=None, *,
                 entry: Entry | None = None, verify: bool = True, upcast: bool = False, precision: str | None = None):
        self.folder, self.manifest, self.kind, self.info, self.providers = folder, manifest, kind, device, providers
        self.pinned, self.verify, self.upcast, self.wanted = entry, verify, upcast, precision
        self.name = kind
        self.device = torch.device("cuda" if kind == "tensorrt" or (kind == "aoti" and _cuda_packages(manifest, device))
                                   else "cpu")
        self.current: tuple[Entry, object] | None = None  # the entry the last decode ran, and its backend
        self._open: dict[str, object] = {}
        self._arena = None  # TensorRT: one device-memory arena for every engine this decoder opens

    def entry_for(self, height: int, width: int, batch: int) -> Entry:
        if self.pinned is not None:
            (h, w), b = self.pinned.bucket, self.pinned.batch
            if (h, w, b) != (height, width, batch):
                raise InputError(f"This decoder runs only the entry {self.pinned.key}.",
                                 received=f"a {height}x{width} output at batch {batch}",
                                 expected=f"{h}x{w} at batch {b}",
                                 fix="pass a latent of that size, or load the folder without pinning an entry")
            return self.pinned
        provider = None
        if self.kind == "onnxruntime":
            from pid_sdk.runtime.onnxruntime_backend import choose_providers

            provider = choose_providers(self.providers)[0]
        return select_entry(self.manifest, str(self.folder), self.kind, (height, width), batch, self.info,
                            provider or "CPUExecutionProvider", self.wanted)

    @property
    def precision(self) -> str:
        """The pinned or requested precision, else that of the entry the last decode ran ("engine" before one)."""
        chosen = self.pinned or (self.current[0] if self.current else None)
        return chosen.precision if chosen else self.wanted or "engine"

    @property
    def engine(self) -> dict | None:
        """What the last decode ran: entry, backend, provider, precision and files (None before the first)."""
        if self.current is None:
            return None
        entry, opened = self.current
        return {"entry": entry.key, **opened.ran}

    def open_entry(self, height: int, width: int, batch: int):
        """The backend of the entry for this size: selected, its files confined and hashed, opened once."""
        entry = self.entry_for(height, width, batch)
        if entry.key not in self._open:
            verify_files(self.folder, entry, verify=self.verify)
            check_entry(self.folder, entry)  # the files are what the entry says: role, shapes, precision, device
            self._open[entry.key] = self._create(entry)
        self.current = entry, self._open[entry.key]
        return self._open[entry.key]

    def backend(self, *, text: Tensor, latent: Tensor, latent_sigma: Tensor, height: int, width: int):
        opened = self.open_entry(height, width, latent.shape[0])
        return opened.prepare(text=text, latent=latent, latent_sigma=latent_sigma, height=height, width=width)

    def _create(self, entry: Entry):
        if self.kind == "aoti":
            from pid_sdk.runtime.aoti_backend import AotiBackend

            return AotiBackend(self.folder, entry)
        if self.kind == "onnxruntime":
            from pid_sdk.runtime.onnxruntime_backend import OnnxRuntimeBackend

            return OnnxRuntimeBackend(self.folder, entry, self.providers, upcast=self.upcast)
        from pid_sdk.runtime.tensorrt_backend import DeviceArena, TensorRTBackend

        source = next((e for e in self.manifest.entries if e.key == entry.source), None)
        if entry.stripped and source is not None:
            verify_files(self.folder, source, verify=self.verify)  # the refit reads the source graph's weights
        self._arena = self._arena or DeviceArena()
        return TensorRTBackend(self.folder, entry, source, self._arena)


def _cuda_packages(manifest: Manifest, device: DeviceInfo) -> bool:
    """AOTInductor decodes run on the GPU when there is one and the folder has CUDA packages."""
    return aoti_device(device) == "cuda" and any(e.backend == "aoti" and e.target == "cuda" for e in manifest.entries)


class FallbackRuntime:
    """backend="auto": each decode runs on the first backend that can open an entry for its size, in the order
    TensorRT -> ONNX Runtime -> PyTorch; a warning names every backend skipped and why (no GPU, no engine of this
    size, a damaged file...)."""

    def __init__(self, open_kind, manifest: Manifest, kinds: tuple[str, ...] = FALLBACK_ORDER):
        self._open_kind, self.manifest, self.kinds = open_kind, manifest, kinds  # manifest: its sizes, for windows
        self._runtimes: dict[str, object] = {}  # kind -> runtime, or the PiDError it failed to open with
        self.active = None
        reasons = []
        for kind in kinds:  # at load: the first backend available at all
            try:
                self.active = self._runtime(kind)
                break
            except PiDError as exc:
                reasons.append(f"{kind}: {skip_reason(exc)}")
        if self.active is None:
            raise ConfigError("No backend can run this engine set.", received=" | ".join(reasons),
                              fix="install onnxruntime, or export with weights (pid-sdk export) for the PyTorch "
                                  "fallback")
        self.first = self.active.name  # the backends before it are not available at all
        if reasons:
            warnings.warn(f"Falling back to {self.first}: " + " | ".join(reasons), stacklevel=4)

    @property
    def name(self) -> str:
        return self.active.name

    @property
    def device(self) -> torch.device:
        return self.active.device

    @property
    def precision(self) -> str:
        return self.active.precision

    @property
    def engine(self) -> dict | None:
        return self.active.engine

    def _runtime(self, kind: str):
        """The backend's runtime, opened once; a backend that cannot open is not retried at every decode (its
        PiDError is kept and raised again: opening the PyTorch fallback hashes and reads the whole weights)."""
        if kind not in self._runtimes:
            try:
                self._runtimes[kind] = self._open_kind(kind)
            except PiDError as exc:
                self._runtimes[kind] = exc
        if isinstance(self._runtimes[kind], PiDError):
            raise self._runtimes[kind]
        return self._runtimes[kind]

    def backend(self, *, text: Tensor, latent: Tensor, latent_sigma: Tensor, height: int, width: int):
        reasons, fixes = [], []
        for kind in self.kinds[self.kinds.index(self.first):]:
            try:
                runtime = self._runtime(kind)
                opened = runtime.open_entry(height, width, latent.shape[0]) if kind != "pytorch" else runtime
            except PiDError as exc:
                reasons.append(f"{kind}: {skip_reason(exc)}")
                fixes += [exc.fix] if exc.fix and exc.fix not in fixes else []
                continue
            if reasons:
                warnings.warn(f"Falling back to {kind} for a {height}x{width} decode: " + " | ".join(reasons),
                              stacklevel=3)
            self.active = runtime
            call = opened.prepare if kind != "pytorch" else opened.backend
            return call(text=text, latent=latent, latent_sigma=latent_sigma, height=height, width=width)
        raise ConfigError(f"No backend can decode a {height}x{width} output from this engine set.",
                          received=" | ".join(reasons), fix="; or ".join(fixes) or "see each backend's reason above")


def skip_reason(exc: PiDError) -> str:
    return exc.what + (f" ({exc.received})" if exc.received not in (None, "") else "")


def open_engine_set(folder: str | Path, backend: str, device: DeviceInfo | None = None, providers=None, *,
                    verify: bool = True, precision: str | None = None):
    """The runtime for `backend`, or with "auto" one that falls back per decode, warning with each reason;
    `precision` keeps to the entries of that precision (and the PyTorch fallback to fp32 / bf16)."""
    if backend not in RUNTIME_BACKENDS:
        raise ConfigError("Unknown backend.", received=backend, expected=", ".join(RUNTIME_BACKENDS),
                          fix="pass backend='auto' (the first that runs here)")
    folder = Path(folder)
    manifest = read_engine_manifest(folder, verify=verify)
    device = device or DeviceInfo.detect()
    _check_precision(manifest, backend, precision, folder)

    def open_kind(kind: str):
        return _open(kind, folder, manifest, device, providers, verify, precision)

    if backend != "auto":
        return manifest, open_kind(backend)
    # a backend the folder has no entries for is not one to fall back from (nor to warn about)
    kinds = tuple(k for k in FALLBACK_ORDER if k == "pytorch" or any(e.backend in ENTRY_KINDS[k]
                                                                     for e in manifest.entries))
    return manifest, FallbackRuntime(open_kind, manifest, kinds)


TORCH_PRECISIONS = ("fp32", "bf16")


def _check_precision(manifest: Manifest, backend: str, precision: str | None, folder: Path) -> None:
    """A precision no entry of the backend has (nor the PyTorch fallback, where it may run) is refused with the
    entries there are."""
    if precision is None or backend == "pytorch":  # the PyTorch fallback has its own refusal (_open)
        return
    kinds = FALLBACK_ORDER if backend == "auto" else (backend,)
    entries = [e for e in manifest.entries if any(e.backend in ENTRY_KINDS.get(k, ()) for k in kinds)]
    if any(e.precision == precision for e in entries) or ("pytorch" in kinds and precision in TORCH_PRECISIONS):
        return
    raise ConfigError(f"The engine folder has no {backend} entry of precision {precision}.", received=precision,
                      expected=", ".join(e.key for e in entries) or "(no entries for this backend)",
                      fix=f"pass one of those precisions, or pid-sdk export {folder} --precision {precision}")


def _open(kind: str, folder: Path, manifest: Manifest, device: DeviceInfo, providers, verify: bool,
          precision: str | None = None):
    if kind == "tensorrt":
        engines = [e for e in manifest.entries if e.backend in ("tensorrt", "tensorrt_rtx")]
        if not engines:
            raise ConfigError("The engine set has no TensorRT engines.", fix=f"pid-sdk build {folder} --target ...")
        if device.sm is None:
            raise ConfigError("TensorRT engines need a CUDA GPU.", received="no CUDA GPU on this machine",
                              fix=build_command(str(folder), "tensorrt", engines[0].bucket, 1, device))
        verdicts = [runs_on(e, device) for e in engines]
        if not any(ok for ok, _ in verdicts):
            raise ConfigError("No TensorRT engine of this set runs here.",
                              received="; ".join(f"{e.key}: {why}" for e, (_, why) in zip(engines, verdicts)),
                              fix=build_command(str(folder), "tensorrt", engines[0].bucket, engines[0].batch, device))
        return EngineRuntime(folder, manifest, "tensorrt", device, verify=verify, precision=precision)
    if kind == "onnxruntime":
        from pid_sdk.runtime.onnxruntime_backend import import_onnxruntime

        import_onnxruntime()
        if not any(e.backend == "onnx" for e in manifest.entries):
            raise ConfigError("The engine set has no ONNX graphs.", fix=f"pid-sdk export {folder} --size HxW")
        return EngineRuntime(folder, manifest, "onnxruntime", device, providers, verify=verify, precision=precision)
    if kind == "aoti":
        if not any(e.backend == "aoti" for e in manifest.entries):
            raise ConfigError("The engine set has no AOTInductor packages.",
                              fix=f"pid-sdk export {folder} --format aoti --size HxW")
        return EngineRuntime(folder, manifest, "aoti", device, verify=verify, precision=precision)
    if precision not in (None, *TORCH_PRECISIONS):
        raise ConfigError(f"The PyTorch fallback runs fp32 or bf16, not {precision}.", received=precision,
                          fix="pass precision='fp32' or 'bf16', or a backend with entries of that precision")
    return torch_runtime(folder, manifest, verify, precision)


def load_weights(folder: Path, manifest: Manifest, verify: bool = True):
    """The model from the folder's shared weights (confined and hashed), strictly loaded into the manifest's
    configuration."""
    from pid_sdk.checkpoints import load_state_dict_strict, read_safetensors

    path = verify_weights(folder, manifest, verify=verify)
    return load_state_dict_strict(manifest.config, read_safetensors(path))


def torch_runtime(folder: Path, manifest: Manifest, verify: bool = True, precision: str | None = None):
    """The PyTorch fallback over the folder's weights: bf16 autocast on a GPU, fp32 on the CPU or when asked (the
    parity reference)."""
    from pid_sdk.runtime.torch_backend import TorchRuntime

    model = load_weights(folder, manifest, verify)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = precision or ("bf16" if device.type == "cuda" else "fp32")
    return TorchRuntime(model.float().to(device).eval(), device, precision)
