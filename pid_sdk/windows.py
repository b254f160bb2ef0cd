"""Windowed decoding: an output larger than (or of another shape than) the sizes a model was trained at, denoised as
overlapping windows of a trained size. Each window sees its own crop of the latent and of the noisy image, at the
positions of a whole image of the window's size; at every step the windows' velocities are blended with weights
that ramp across the overlaps, into one image-wide velocity. The sampler and its noise stay image-wide, so the
seed draws the same noise whatever the windows."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from pid_sdk.errors import InputError


@dataclass(frozen=True)
class Window:
    top: int  # output pixels
    left: int
    height: int
    width: int

    def crop(self, t: Tensor, cell: int = 1) -> Tensor:
        """This window of an image-sized tensor ([..., H, W]), or of a latent with `cell` output pixels per cell."""
        rows = slice(self.top // cell, (self.top + self.height) // cell)
        columns = slice(self.left // cell, (self.left + self.width) // cell)
        return t[..., rows, columns]


def parse_window(text: str | None, name: str = "--window") -> tuple[int, int] | str | None:
    """The CLI's / the server's text: None, "auto", or HxW as (height, width); `check_window` judges the numbers."""
    if text is None or text == "auto":
        return text
    from pid_sdk.buckets import Bucket
    from pid_sdk.errors import PiDError

    sep = "" if name.endswith("=") else " "
    try:
        bucket = Bucket.parse(text)
    except PiDError:
        raise InputError(f"{name} takes HxW or auto.", received=text, expected="e.g. 512x512, or auto",
                         fix=f"pass {name}{sep}512x512 (a size the model was trained at) or {name}{sep}auto") from None
    return bucket.height, bucket.width


def check_window(window, overlap, height: int, width: int, cell: int) -> tuple[tuple[int, int], int]:
    """(window height, window width), overlap: whole latent cells, the window no larger than the output."""
    ok = isinstance(window, (tuple, list)) and len(window) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 and v % cell == 0 for v in window)
    if not ok:
        raise InputError("window= takes (height, width) in output pixels, whole latent cells.", received=repr(window),
                         expected=f"two positive multiples of {cell} (one latent cell of this model), or 'auto'",
                         fix=f"pass window='auto' (a trained size or engine bucket that fits the output), or "
                             f"(h, w) in multiples of {cell}")
    wh, ww = min(window[0], height), min(window[1], width)
    overlap = default_overlap(wh, ww, cell) if overlap is None else overlap
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0 or overlap % cell \
            or (overlap >= min(wh, ww) and (wh, ww) != (height, width)):
        raise InputError("overlap= takes output pixels shared by neighbouring windows, whole latent cells.",
                         received=repr(overlap), expected=f"a multiple of {cell} in [0, {min(wh, ww)})",
                         fix=f"pass overlap={default_overlap(wh, ww, cell)} (the default for this window), or "
                             "leave it out")
    return (wh, ww), overlap


def default_overlap(wh: int, ww: int, cell: int) -> int:
    """A quarter of the window's shorter side, in whole cells (at least one)."""
    return max(cell, min(wh, ww) // 4 // cell * cell)


def auto_window(height: int, width: int, sizes: list[tuple[int, int]], cell: int) -> tuple[int, int]:
    """The largest of `sizes` (trained sizes, engine buckets) that fits inside the output; the smallest one, cut to
    the output, when none fits. The output itself where it is one of them."""
    if (height, width) in sizes or not sizes:
        return height, width
    fitting = [s for s in sizes if s[0] <= height and s[1] <= width]
    h, w = max(fitting, key=lambda s: s[0] * s[1]) if fitting else min(sizes, key=lambda s: s[0] * s[1])
    return min(h, height) // cell * cell, min(w, width) // cell * cell


def plan_windows(height: int, width: int, window: tuple[int, int], overlap: int) -> list[Window]:
    """Windows covering the output, row by row: a stride of window - overlap, the last row and column flush with
    the far edge (so they may overlap their neighbour by more)."""
    wh, ww = window
    return [Window(top, left, wh, ww) for top in _starts(height, wh, overlap) for left in _starts(width, ww, overlap)]


def _starts(size: int, window: int, overlap: int) -> list[int]:
    if window >= size:
        return [0]
    starts = list(range(0, size - window, window - overlap))
    return starts + [size - window]


BLENDS = ("linear", "cosine", "flat")


def blend_weights(windows: list[Window], height: int, width: int, blend: str = "linear") -> list[Tensor]:
    """Per window, [H_w, W_w] weights that ramp across each overlap with a neighbour (none at the image's own
    edges), normalised so that the weights of all windows sum to one at every pixel. `blend`: the ramp's shape,
    "linear", "cosine" (flat at both ends), or "flat" (no ramp: the overlap is the windows' plain mean)."""
    raw = [_ramp(w.height, w.top, height, blend)[:, None] * _ramp(w.width, w.left, width, blend)[None, :]
           for w in windows]
    total = torch.zeros(height, width, dtype=torch.float64)
    for w, r in zip(windows, raw):
        total[w.top:w.top + w.height, w.left:w.left + w.width] += r
    return [(r / w.crop(total)).float() for w, r in zip(windows, raw)]


def _ramp(length: int, start: int, size: int, blend: str = "linear") -> Tensor:
    """1 inside, rising from near 0 on a side that another window covers (the ramp spans half the window: only
    its part inside the overlap counts, where one window alone covers a pixel its weight is normalised to 1)."""
    ramp = torch.ones(length, dtype=torch.float64)
    if blend == "flat":
        return ramp
    span = max(1, length // 2)
    rising = (torch.arange(span, dtype=torch.float64) + 0.5) / span
    if blend == "cosine":
        rising = torch.sin(rising * torch.pi / 2) ** 2
    if start > 0:
        ramp[:span] = torch.minimum(ramp[:span], rising)
    if start + length < size:
        ramp[-span:] = torch.minimum(ramp[-span:], rising.flip(0))
    return ramp


class WindowedStep:
    """The denoiser over windows, `infer({x, sigma}) -> {v}` like a whole-image step: calls of `per_call` windows
    (stacked on the batch axis), each window's velocity weighted into the image-wide one. A call's conditioning
    (text tokens, latent features) is made again at every step rather than kept for every window: memory holds one
    call's, whatever the number of windows, for the adapter's work once per step (3% of a 1.3B step at 2048)."""

    def __init__(self, runtime, windows: list[Window], *, text: Tensor, latent: Tensor, latent_sigma: Tensor,
                 height: int, width: int, blend: str = "linear", per_call: int = 1):
        cell = height // latent.shape[-2]
        self.windows, self.weights = windows, blend_weights(windows, height, width, blend)
        self.calls = [windows[i:i + per_call] for i in range(0, len(windows), per_call)]
        self.prepare = [partial(runtime.backend, text=_stacked(text, len(call)),
                                latent=torch.cat([w.crop(latent, cell) for w in call]),  # [k*B, C, h_w, w_w]
                                latent_sigma=_stacked(latent_sigma, len(call)), height=call[0].height,
                                width=call[0].width) for call in self.calls]
        self.whole = self.prepare[0]() if len(windows) == 1 else None  # the window is the image

    def infer(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.whole is not None:  # the whole-image step itself
            return self.whole.infer(feeds)
        x = feeds["x"]
        v, batch, weights = torch.zeros_like(x), x.shape[0], iter(self.weights)
        for call, prepare in zip(self.calls, self.prepare):
            crops = torch.cat([w.crop(x) for w in call])  # [k*B, 3, H_w, W_w]
            parts = prepare().infer({**feeds, "x": crops, "sigma": _stacked(feeds["sigma"], len(call))})["v"]
            for i, w in enumerate(call):
                part = parts[i * batch:(i + 1) * batch].to(x.device, x.dtype)
                w.crop(v).add_(part * next(weights).to(x.device))  # [B, 3, H_w, W_w] into its place
        return {"v": v}


def _stacked(t, copies: int):
    """A per-item tensor repeated for `copies` windows on the batch axis; a scalar as it is."""
    if copies == 1 or not isinstance(t, Tensor) or t.ndim == 0 or t.numel() == 1:
        return t
    return torch.cat([t] * copies)
