from pid_sdk.model.pid import PiD, build_model, randomize
from pid_sdk.model.pixeldit import PixelDiT

__all__ = ["PiD", "PixelDiT", "build_model", "randomize"]
