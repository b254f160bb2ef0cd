"""One network step captured as a CUDA graph and replayed with new inputs: no per-kernel launch cost, no host work.

A graph is tied to the addresses of its inputs, so it owns static copies of them: the image and sigma of the step,
and the per-decode state (text tokens, latent features). A decode with the same sizes copies its own state in once
(`load`), then every step copies x and sigma and replays.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

Step = Callable[[Tensor, Tensor, list[Tensor]], Tensor]


class GraphedStep:
    def __init__(self, step: Step, x: Tensor, sigma: Tensor, state: list[Tensor], context: Callable, warmup: int = 2):
        self.x, self.sigma = x.clone(), sigma.clone()
        self.state = [t.clone() for t in state]
        self.owner: object = None
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side), context():  # warm-up off the default stream, as capture requires
            for _ in range(warmup):
                step(self.x, self.sigma, self.state)
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), context():
            self.out = step(self.x, self.sigma, self.state)

    def load(self, owner: object, state: list[Tensor]) -> None:
        """Copy a decode's state in, unless it is already there (two decodes alternate under guidance)."""
        if self.owner is not owner:
            for static, value in zip(self.state, state):
                static.copy_(value)
            self.owner = owner

    def run(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.x.copy_(x)
        self.sigma.copy_(sigma)
        self.graph.replay()
        return self.out.clone()  # the next replay overwrites `out`
