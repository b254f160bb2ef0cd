"""Which scaled-dot-product-attention kernel the PyTorch backend runs: choose one, and report the one that ran."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch.autograd import DeviceType
from torch.nn.attention import SDPBackend, sdpa_kernel

from pid_sdk.errors import ConfigError

SDPA_KERNELS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
ATTENTION_CHOICES = ("auto", *SDPA_KERNELS)
# aten operator of each kernel family, as the profiler names it
KERNEL_OPS = {
    "_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_cudnn_attention": "cudnn",
    "_scaled_dot_product_efficient_attention": "efficient (memory-efficient)",
    "_scaled_dot_product_attention_math": "math (unfused)",
    "pid_sdk::fp8_attention": "cudnn FP8",  # Speed(fp8_attention=True): pid_sdk/runtime/fp8_attention.py
}


def check_attention(name: str) -> None:
    if name not in ATTENTION_CHOICES:
        raise ConfigError("Unknown attention kernel.", received=name, expected=", ".join(ATTENTION_CHOICES),
                          fix="use 'auto' to let PyTorch pick")


def lse_kernel(name: str, device: torch.device) -> str:
    """The kernel of `pid_sdk.model.split_attention` for an `attention` setting ("auto": flash on CUDA)."""
    check_attention(name)
    if name == "math":
        return "math"
    if device.type != "cuda":
        return "cpu"
    return "flash" if name == "auto" else name


def attention_context(name: str):
    """Restrict SDPA to one kernel family ("auto": PyTorch's own choice). Fails loudly if that kernel cannot run."""
    check_attention(name)
    return contextlib.nullcontext() if name == "auto" else sdpa_kernel([SDPA_KERNELS[name]])


def profiled_events(fn: Callable[[], object]) -> list:
    """Run `fn` once under the profiler (host operators, and CUDA kernels where there is a GPU); its events, summed
    by name."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    return list(prof.key_averages())


def kernels_used(fn: Callable[[], object]) -> dict[str, int]:
    """Run `fn` once under the profiler; attention kernel family -> number of calls."""
    found: dict[str, int] = {}
    for event in profiled_events(fn):
        op = event.key.removeprefix("aten::")
        if op in KERNEL_OPS and event.device_type == DeviceType.CPU:  # not the GPU-side annotations of the same op
            found[KERNEL_OPS[op]] = found.get(KERNEL_OPS[op], 0) + event.count
    return found
