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


# (height, width): square, 4:3, 3:4, 7:4, 4:7 at about 4.2 megapixels, and twice each side for 2k->4k models.
BUCKETS_2K = tuple(Bucket(h, w) for h, w in [(2048, 2048), (2304, 1728), (1728, 2304), (2688, 1536), (1536, 2688)])
BUCKETS_4K = tuple(Bucket(2 * b.height, 2 * b.width) for b in BUCKETS_2K)


def default_buckets(preset: str) -> tuple[Bucket, ...]:
    return BUCKETS_4K if "2kto4k" in preset else BUCKETS_2K
