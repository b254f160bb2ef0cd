"""AOTInductor backend: the text / adapter / denoiser packages of one bucket, compiled ahead of time by
`pid-sdk export --format aoti` and run by torch without recompiling (the C ABI runs the same packages)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from pid_sdk.runtime.manifest import Entry, check_static_inputs, inside


class AotiBackend:
    """Three loaded packages. `prepare` runs the text and adapter graphs once and returns the step runner."""

    name = "aoti"

    def __init__(self, folder: str | Path, entry: Entry):
        import torch._inductor

        self.entry, self.device = entry, torch.device(entry.target or "cpu")
        self.graphs = {g: torch._inductor.aoti_load_package(str(inside(folder, rel))) for g, rel in entry.files.items()}

    @property
    def ran(self) -> dict:
        return {"backend": "aoti", "provider": f"AOTInductor ({self.device.type}, torch {self.entry.torch_version})",
                "precision": self.entry.precision, "files": sorted(self.entry.files.values())}

    def prepare(self, *, text: Tensor, latent: Tensor, latent_sigma: Tensor, height: int, width: int) -> "AotiStep":
        check_static_inputs(self.entry, text, latent)
        with torch.no_grad():
            tokens = self.graphs["text"](text.to(self.device, torch.float32))
            latent_tokens, offsets = self.graphs["adapter"](latent.to(self.device, torch.float32),
                                                             latent_sigma.to(self.device, torch.float32))
        return AotiStep(self.graphs["denoiser"], self.device, tokens, latent_tokens, offsets)


class AotiStep:
    """The denoiser with this decode's conditioning: `infer({x, sigma}) -> {v}`, v on x's device (a CPU package
    selected on a GPU machine runs on the CPU)."""

    def __init__(self, denoiser, device: torch.device, tokens: Tensor, latent_tokens: Tensor, offsets: Tensor):
        self.denoiser, self.device, self.conditioning = denoiser, device, (tokens, latent_tokens, offsets)

    def infer(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        x = feeds["x"]
        sigma = torch.full((x.shape[0],), float(feeds["sigma"]), dtype=torch.float32, device=self.device)
        with torch.no_grad():
            return {"v": self.denoiser(x.to(self.device), sigma, *self.conditioning).to(x.device)}
