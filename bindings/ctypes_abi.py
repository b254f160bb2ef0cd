"""The C ABI (c/pid_sdk.h) declared for Python's ctypes: what tests/test_c_abi.py and bench/embedding.py call, and
a template for other foreign-function interfaces (C#, Go, Rust declare the same signatures)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

LIBRARY = Path(__file__).resolve().parent / "build" / "libpid_sdk.so"
OK, INPUT, CHECKPOINT, CONFIG, NUMERICS, INTERNAL = range(6)


def load(path: str | Path = LIBRARY) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    p, i64p, f32p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_float)
    lib.pid_abi_version.argtypes = []
    lib.pid_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(p)]
    lib.pid_output_size.argtypes = [p, i64p, i64p]
    lib.pid_decode.argtypes = [p, f32p, i64p, ctypes.c_char_p, ctypes.c_float, ctypes.c_int64,
                               ctypes.POINTER(ctypes.c_uint8), ctypes.c_size_t]
    lib.pid_windowed_output_size.argtypes = [p, i64p, i64p]
    lib.pid_decode_windowed.argtypes = [p, f32p, i64p, ctypes.c_char_p, ctypes.c_float, ctypes.c_int64, i64p,
                                        ctypes.c_int64, ctypes.POINTER(ctypes.c_uint8), ctypes.c_size_t]
    lib.pid_decode_windowed_blend.argtypes = [p, f32p, i64p, ctypes.c_char_p, ctypes.c_float, ctypes.c_int64, i64p,
                                              ctypes.c_int64, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint8),
                                              ctypes.c_size_t]
    lib.pid_close.argtypes, lib.pid_close.restype = [p], None
    lib.pid_last_error.argtypes, lib.pid_last_error.restype = [], ctypes.c_char_p
    lib.pid_read_latent.argtypes = [ctypes.c_char_p, f32p, ctypes.c_size_t, i64p]
    return lib


def last_error(lib: ctypes.CDLL) -> str:
    return lib.pid_last_error().decode()


class Handle:
    """A pid_decoder*: `status` is pid_open's; `decode` returns (status, uint8 [B, H, W, 3] or None)."""

    def __init__(self, lib: ctypes.CDLL, folder, device: bytes | None = b"cpu"):
        self.lib, self.ptr = lib, ctypes.c_void_p()
        self.status = lib.pid_open(str(folder).encode(), device, ctypes.byref(self.ptr))

    def decode(self, latent: np.ndarray, *, space: bytes | None = b"flux1", sigma: float = 0.0, seed: int = 0,
               out_bytes: int | None = None, shape=None, window: tuple[int, int] | None = None,
               overlap: int = -1, blend: bytes | None = None) -> tuple[int, np.ndarray | None]:
        """`window` (h, w), (0, 0) for auto: pid_decode_windowed (with `blend`: pid_decode_windowed_blend); else
        pid_decode."""
        latent = np.ascontiguousarray(latent, dtype=np.float32)
        dims = (ctypes.c_int64 * 4)(*(shape or latent.shape))
        hw = (ctypes.c_int64 * 2)()
        sizing = self.lib.pid_output_size if window is None else self.lib.pid_windowed_output_size
        sized = sizing(self.ptr, dims, hw) == OK
        size = out_bytes if out_bytes is not None else (latent.shape[0] * hw[0] * hw[1] * 3 if sized else 3)
        out = np.zeros(max(size, 1), np.uint8)
        data, rgb = latent.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out.ctypes.data_as(
            ctypes.POINTER(ctypes.c_uint8))
        if window is None:
            status = self.lib.pid_decode(self.ptr, data, dims, space, sigma, seed, rgb, size)
        elif blend is None:
            status = self.lib.pid_decode_windowed(self.ptr, data, dims, space, sigma, seed,
                                                  (ctypes.c_int64 * 2)(*window), overlap, rgb, size)
        else:
            status = self.lib.pid_decode_windowed_blend(self.ptr, data, dims, space, sigma, seed,
                                                        (ctypes.c_int64 * 2)(*window), overlap, blend, rgb, size)
        if status != OK:
            return status, None
        return status, out[:size].reshape(latent.shape[0], hw[0], hw[1], 3)

    def close(self) -> None:
        self.lib.pid_close(self.ptr)
