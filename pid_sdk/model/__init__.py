import torch

from pid_sdk.model.pid import PiD, build_model, randomize
from pid_sdk.model.pixeldit import PixelDiT

__all__ = ["PiD", "PixelDiT", "build_model", "parameter_count", "randomize"]


def parameter_count(cfg) -> int:
    """The parameters of the network `cfg` describes, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(cfg).parameters())
