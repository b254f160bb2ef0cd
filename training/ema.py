from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Exponential moving average of a model's parameters: ema = decay * ema + (1 - decay) * param."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - self.decay)
