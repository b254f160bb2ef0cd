"""ONNX Runtime backend: the exported text / adapter / denoiser graphs of one bucket."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pid_sdk.errors import ConfigError, InputError
from pid_sdk.runtime.manifest import Entry

DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("The ONNX Runtime backend needs the `onnxruntime` package.",
                          fix="pip install 'pid-sdk[onnx]' (CPU) or 'pid-sdk[gpu]' (CUDA); never both") from None
    return onnxruntime


class OnnxRuntimeBackend:
    """Three sessions of one bucket. `prepare` runs the text and adapter graphs once and returns the step runner."""

    name = "onnxruntime"

    def __init__(self, folder: str | Path, entry: Entry, providers: tuple[str, ...] | None = None):
        ort = import_onnxruntime()
        available = ort.get_available_providers()
        wanted = [p for p in (providers or DEFAULT_PROVIDERS) if p in available] or ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.entry = entry
        self.sessions = {g: ort.InferenceSession(str(Path(folder) / rel), options, providers=wanted)
                         for g, rel in entry.files.items()}
        # ONNX Runtime drops a provider it cannot load without an error: report what each session really uses.
        self.providers_in_use = {g: s.get_providers()[0] for g, s in self.sessions.items()}
        if providers and self.providers_in_use["denoiser"] != providers[0]:
            warnings.warn(f"ONNX Runtime runs on {self.providers_in_use['denoiser']}, not {providers[0]} "
                          f"(available: {available})", stacklevel=2)

    def prepare(self, *, text: Tensor, latent: Tensor, latent_sigma: Tensor, height: int, width: int) -> "OnnxStep":
        want = {"text": tuple(self._shape("text", "text")), "latent": tuple(self._shape("adapter", "latent"))}
        got = {"text": tuple(text.shape), "latent": tuple(latent.shape)}
        for k in want:
            if want[k] != got[k]:
                raise InputError(f"The {k} does not fit this engine's static shape.", received=got[k],
                                 expected=f"{want[k]} (bucket {self.entry.bucket}, batch {self.entry.batch})",
                                 fix="pass full-length text embeddings; decode with the engine of this size")
        (tokens,) = self.sessions["text"].run(None, {"text": _np(text)})
        latent_tokens, offsets = self.sessions["adapter"].run(None, {"latent": _np(latent),
                                                                      "latent_sigma": _np(latent_sigma)})
        return OnnxStep(self.sessions["denoiser"],
                        {"text_tokens": tokens, "latent_tokens": latent_tokens, "gate_offsets": offsets})

    def _shape(self, graph: str, name: str) -> list[int]:
        return next(t["shape"] for t in self.entry.io[graph]["inputs"] if t["name"] == name)


class OnnxStep:
    """The denoiser with this decode's text and latent conditioning: `infer({x, sigma}) -> {v}`."""

    def __init__(self, session, conditioning: dict[str, np.ndarray]):
        self.session, self.conditioning = session, conditioning

    def infer(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        sigma = torch.as_tensor(feeds["sigma"], dtype=torch.float32).reshape(-1).expand(feeds["x"].shape[0])
        (v,) = self.session.run(None, {"x": _np(feeds["x"]), "sigma": _np(sigma), **self.conditioning})
        return {"v": torch.from_numpy(v)}


def _np(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())
