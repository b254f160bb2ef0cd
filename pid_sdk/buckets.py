"""Aspect buckets: the output sizes engines are built for (static shapes, one engine per bucket)."""

from __future__ import annotations

from dataclasses import dataclass

from pid_sdk.errors import InputError


@dataclass(frozen=True, order=True)
class Bucket:
    height: int
    width: int

    @property
    def name(self) -> str:
        return f"{self.height}x{self.width}"

    @classmethod
    def parse(cls, text: str) -> "Bucket":
        try:
            h, w = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise InputError("Cannot read the size.", received=text, expected="HEIGHTxWIDTH, e.g. 2048x2048",
                             fix="pass --size 2048x2048") from None
        return cls(h, w)

    def latent_size(self, factor: int, sr_scale: int) -> tuple[int, int]:
        step = factor * sr_scale
        if self.height % step or self.width % step:
            raise InputError(f"{self.name} is not a whole number of latent cells.", received=self.name,
                             expected=f"height and width multiples of {step} (latent factor {factor} x {sr_scale})",
                             fix=f"round to {self.height // step * step}x{self.width // step * step}")
        return self.height // step, self.width // step


def trained_buckets(cfg) -> tuple[Bucket, ...]:
    """The output sizes the model's weights were trained at (`PiDConfig.trained_sizes`): what export and compare
    do by default, and the windows of a windowed decode."""
    return tuple(Bucket(h, w) for h, w in cfg.trained_sizes)
