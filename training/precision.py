"""Mixed precision of training and distillation: bf16 autocast on CUDA (paper section 4.1), full precision elsewhere."""

from __future__ import annotations

import contextlib

import torch


def autocast(device: torch.device):
    """The forward passes' context on `device`; losses and backward stay outside it."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
