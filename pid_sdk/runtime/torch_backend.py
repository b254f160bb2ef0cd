"""The PyTorch backend: the reference modules, with per-decode work done once and a per-step `infer`.

The runtime holds what outlives a decode: the (possibly compiled) step network, the geometry of each size and the
CUDA graphs. A backend holds one decode's state: text tokens and latent features, computed once.
"""

from __future__ import annotations

import contextlib
import itertools

import torch
from torch import Tensor, nn

from pid_sdk.model.adapter import LatentFeatures
from pid_sdk.model.pixeldit import Geometry
from pid_sdk.runtime.attention import attention_context
from pid_sdk.runtime.speed import Speed

_decode_ids = itertools.count()


class TorchRuntime:
    """Any size, any batch: one TorchBackend per decode over the same model."""

    name = "pytorch"

    def __init__(self, model: nn.Module, device: torch.device, precision: str, speed: Speed | None = None):
        self.model, self.device, self.precision = model, device, precision
        self.speed = speed or Speed()
        self.step_fn = compiled(model.denoise, self.speed) if self.speed.compile else model.denoise
        # once per decode, but 8 GroupNorms of 4 groups each run as 4-row reductions in eager mode (12 ms at 2048²)
        self.encode_fn = compiled(model.encode_latent, self.speed) if self.speed.compile else model.encode_latent
        self._geometry: dict[tuple[int, int, int], Geometry] = {}
        self._graphs: dict[tuple, object] = {}

    @property
    def engine(self) -> dict:
        """What a decode runs: the PyTorch model (no engine entry), on this device, at this precision."""
        return {"entry": None, "backend": "pytorch", "provider": str(self.device), "precision": self.precision,
                "files": []}

    def backend(self, *, text: Tensor, latent: Tensor, latent_sigma: Tensor, height: int, width: int) -> "TorchBackend":
        backend = TorchBackend(self)  # one per decode: prepared state is its own
        return backend.prepare(text=text, latent=latent, latent_sigma=latent_sigma, height=height, width=width)

    def context(self):
        """Autocast and the chosen attention kernel, around every network call."""
        stack = contextlib.ExitStack()
        if self.precision == "bf16":
            # autocast's cache of cast weights must not outlive a CUDA-graph capture that allocated it
            stack.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16,
                                               cache_enabled=not self.speed.cuda_graphs))
        stack.enter_context(attention_context(self.speed.attention))
        return stack

    def geometry(self, height: int, width: int, text_len: int) -> Geometry:
        key = (height, width, text_len)
        if key not in self._geometry:
            self._geometry[key] = self.model.geometry(height, width, text_len, self.device)
        return self._geometry[key]

    def step(self, x: Tensor, sigma: Tensor, geo: Geometry, state: list[Tensor], n_gates: int) -> Tensor:
        feats = None if n_gates < 0 else LatentFeatures(state[1:1 + n_gates], state[1 + n_gates:])
        return self.step_fn(x, sigma, state[0], geo, feats)

    def graph(self, x: Tensor, sigma: Tensor, geo: Geometry, state: list[Tensor], n_gates: int):
        from pid_sdk.runtime.cuda_graph import GraphedStep

        key = (tuple(x.shape), geo.height, geo.width, tuple(state[0].shape), n_gates)
        if key not in self._graphs:
            self._graphs[key] = GraphedStep(lambda xs, ss, st: self.step(xs, ss, geo, st, n_gates), x, sigma, state,
                                            self.context)
        return self._graphs[key]


def compiled(fn, speed: Speed):
    """torch.compile of `fn` for these settings (one graph per image size)."""
    from pid_sdk.runtime.speed import INDUCTOR_FLAGS

    return torch.compile(fn, dynamic=False, options=dict(INDUCTOR_FLAGS) if speed.autotune else None)


class TorchBackend:
    """`prepare` once per decode (geometry, text tokens, latent features), then `infer({x, sigma}) -> {v}`."""

    name = "pytorch"

    def __init__(self, runtime: TorchRuntime):
        self.runtime, self.device = runtime, runtime.device
        self.decode_id = next(_decode_ids)
        self._state: tuple[Geometry, list[Tensor], int] | None = None

    @torch.no_grad()
    def prepare(self, *, text: Tensor, latent: Tensor | None, latent_sigma: Tensor, height: int,
                width: int) -> "TorchBackend":
        rt, model = self.runtime, self.runtime.model
        geo = rt.geometry(height, width, min(text.shape[1], model.cfg.txt_max_length))
        with rt.context():
            state = [model.embed_text(text.to(self.device))]
            n_gates = -1
            if latent is not None:
                feats = rt.encode_fn(latent.to(self.device), latent_sigma.to(self.device), geo)
                state += feats.tokens + feats.offsets
                n_gates = len(feats.tokens)
        self._state = (geo, state, n_gates)
        return self

    @torch.no_grad()
    def infer(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        if self._state is None:
            raise RuntimeError("TorchBackend.infer called before prepare()")
        geo, state, n_gates = self._state
        x = feeds["x"].to(self.device)
        if state[0].shape[0] != x.shape[0]:  # guidance batches [cond, uncond] share the image
            raise ValueError("text batch and image batch differ")
        sigma = self._sigma(feeds["sigma"], x.shape[0])
        rt = self.runtime
        if rt.speed.cuda_graphs:
            graph = rt.graph(x, sigma, geo, state, n_gates)
            graph.load(self.decode_id, state)
            v = graph.run(x, sigma)
        else:
            with rt.context():
                v = rt.step(x, sigma, geo, state, n_gates)
        return {"v": v.float()}

    def _sigma(self, sigma, batch: int) -> Tensor:
        """[B] float32 on the device. A Python number is filled in on the device: copying it would sync the host."""
        if isinstance(sigma, (int, float)):
            return torch.full((batch,), float(sigma), dtype=torch.float32, device=self.device)
        return torch.as_tensor(sigma, dtype=torch.float32).to(self.device).reshape(-1).expand(batch).contiguous()
