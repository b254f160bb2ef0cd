"""ONNX Runtime backend: the exported text / adapter / denoiser graphs of one bucket."""

from __future__ import annotations

import posixpath
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pid_sdk.errors import CheckpointError, ConfigError
from pid_sdk.interrupts import call_interruptibly
from pid_sdk.runtime.manifest import Entry, check_static_inputs, inside
from pid_sdk.runtime.selection import TWIN_PRECISIONS, onnx_runs_on
from pid_sdk.runtime.upcast import fp32_twin

DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("The ONNX Runtime backend needs the `onnxruntime` package.",
                          fix="pip install 'pid-sdk[onnx]' (CPU) or 'pid-sdk[gpu]' (CUDA); never both") from None
    return onnxruntime


def choose_providers(providers: tuple[str, ...] | None = None) -> list[str]:
    """The requested providers this ONNX Runtime has, in order; the CPU provider when none of them is (with a
    warning when the caller named them). A name ONNX Runtime does not know is refused."""
    ort = import_onnxruntime()
    if providers is not None:
        if isinstance(providers, str) or not all(isinstance(p, str) for p in providers):
            raise ConfigError("providers= takes a list of ONNX Runtime provider names.", received=repr(providers)[:80],
                              expected="e.g. ['CUDAExecutionProvider', 'CPUExecutionProvider']",
                              fix="pass a list (or leave providers out: the fastest available)")
        unknown = [p for p in providers if p not in ort.get_all_providers()]
        if unknown:
            raise ConfigError("ONNX Runtime knows no such execution provider.", received=unknown,
                              expected=", ".join(ort.get_all_providers()[:8]) + ", ...",
                              fix="check the spelling, e.g. 'CUDAExecutionProvider'")
    available = ort.get_available_providers()
    chosen = [p for p in (providers or DEFAULT_PROVIDERS) if p in available]
    if not chosen:
        warnings.warn(f"None of the providers {list(providers)} is available in this ONNX Runtime (it has "
                      f"{available}): running on CPUExecutionProvider", stacklevel=3)
    return chosen or ["CPUExecutionProvider"]


class OnnxRuntimeBackend:
    """Three sessions of one bucket. `prepare` runs the text and adapter graphs once and returns the step runner.

    `upcast`: where the provider has no kernels of the entry's precision (bf16 on the CPU), run the graph's fp32
    twin instead of refusing (for `compare`; `ran` then says so)."""

    name = "onnxruntime"

    def __init__(self, folder: str | Path, entry: Entry, providers: tuple[str, ...] | None = None, *,
                 upcast: bool = False):
        ort = import_onnxruntime()
        wanted = choose_providers(providers)
        runs, why = onnx_runs_on(entry, wanted[0])
        if not runs and not (upcast and entry.precision in TWIN_PRECISIONS):
            raise ConfigError(f"ONNX Runtime cannot run {entry.key} here: {why}.", received=wanted,
                              expected=f"a provider with {entry.precision} kernels",
                              fix="decode with an entry this provider runs (pid-sdk export --precision fp32), "
                                  "or build TensorRT engines for it (pid-sdk build)")
        self.entry, self.upcast = entry, not runs
        check_external_data(folder, entry)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        with tempfile.TemporaryDirectory(prefix="pid-twin-") as tmp:  # sessions keep their weights in memory
            paths = {g: inside(folder, rel) for g, rel in entry.files.items()}
            if self.upcast:
                paths = {g: fp32_twin(p, Path(tmp) / p.name) for g, p in paths.items()}
            self.sessions = {g: open_session(p, options, wanted) for g, p in paths.items()}
        # ONNX Runtime drops a provider it cannot load without an error: report what each session really uses.
        self.providers_in_use = {g: s.get_providers()[0] for g, s in self.sessions.items()}
        if providers and self.providers_in_use["denoiser"] != providers[0]:
            warnings.warn(f"ONNX Runtime runs on {self.providers_in_use['denoiser']}, not {providers[0]} "
                          f"(available: {ort.get_available_providers()})", stacklevel=2)

    @property
    def ran(self) -> dict:
        """What this backend runs, for parity reports."""
        return {"backend": "onnxruntime", "provider": self.providers_in_use["denoiser"],
                "precision": self.entry.precision + (" (its fp32 twin: no bf16 kernels here)" if self.upcast else ""),
                "files": sorted(self.entry.files.values())}

    def prepare(self, *, text: Tensor, latent: Tensor, latent_sigma: Tensor, height: int, width: int) -> "OnnxStep":
        check_static_inputs(self.entry, text, latent)
        (tokens,) = run_interruptibly(self.sessions["text"], {"text": _np(text)})
        latent_tokens, offsets = run_interruptibly(self.sessions["adapter"], {"latent": _np(latent),
                                                                             "latent_sigma": _np(latent_sigma)})
        return OnnxStep(self.sessions["denoiser"],
                        {"text_tokens": tokens, "latent_tokens": latent_tokens, "gate_offsets": offsets})


class OnnxStep:
    """The denoiser with this decode's text and latent conditioning: `infer({x, sigma}) -> {v}`."""

    def __init__(self, session, conditioning: dict[str, np.ndarray]):
        self.session, self.conditioning = session, conditioning

    def infer(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        sigma = torch.as_tensor(feeds["sigma"], dtype=torch.float32).reshape(-1).expand(feeds["x"].shape[0])
        (v,) = run_interruptibly(self.session, {"x": _np(feeds["x"]), "sigma": _np(sigma), **self.conditioning})
        return {"v": torch.from_numpy(v)}


def open_session(path: Path, options, providers: list[str]):
    """An InferenceSession (seconds to minutes for a 1.3B graph: optimisation, weights read) that Ctrl-C leaves
    at once: ONNX Runtime has no way to stop it, so the half-made session is abandoned (pid_sdk/interrupts.py)."""
    ort = import_onnxruntime()
    return call_interruptibly(lambda: ort.InferenceSession(str(path), options, providers=providers), None,
                              name="onnxruntime-session")


def run_interruptibly(session, feeds: dict[str, np.ndarray]) -> list:
    """`session.run`, stopped between nodes on Ctrl-C (RunOptions.terminate): pid_sdk/interrupts.py."""
    options = import_onnxruntime().RunOptions()
    return call_interruptibly(lambda: session.run(None, feeds, options),
                              lambda: setattr(options, "terminate", True), name="onnxruntime-run")


def _np(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())


def check_external_data(folder: str | Path, entry: Entry) -> None:
    """Every external-data file a graph points to is one of the entry's hashed files: a graph cannot make ONNX
    Runtime open a file the manifest does not vouch for."""
    import onnx

    for rel in entry.files.values():
        model = onnx.load(str(inside(folder, rel)), load_external_data=False)
        for tensor in _tensors(model.graph):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            location = next((kv.value for kv in tensor.external_data if kv.key == "location"), "")
            target = posixpath.normpath(posixpath.join(posixpath.dirname(rel), location))
            if target not in entry.sha256 or posixpath.isabs(location) or ".." in location.split("/"):
                raise CheckpointError(f"{rel} of {entry.key} reads weights from a file its manifest does not list.",
                                      received=location[:200], expected=sorted(entry.sha256),
                                      fix="re-export the entry (pid-sdk export); never edit graphs by hand")


def _tensors(graph):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensors(g)
