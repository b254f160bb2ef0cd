"""Where a decode's time goes: profile one call and add up the time of its kernels by kind.

On CUDA the kinds are read from kernel names (device time); on the CPU from aten operator names (self CPU time), so
the harness can be checked without a GPU. The kinds line up with `pid_sdk.flops` (attention, matmuls) so achieved
TFLOP/s can be read per kind.
"""

from __future__ import annotations

import re
from typing import Callable

import torch

from pid_sdk.runtime.attention import profiled_events

# first match wins: cuDNN's attention kernels carry "sdpa"/"fmha" before any "gemm" in their names
KINDS = (
    ("attention", re.compile(r"flash|fmha|sdpa|attention|attn")),
    ("matmul", re.compile(r"gemm|nvjet|xmma|cutlass|\bmm\b|addmm|bmm|matmul|_scaled_mm|conv|aten::linear")),
    ("norm", re.compile(r"norm")),
)
CONTAINERS = {"aten::linear", "aten::matmul", "aten::scaled_dot_product_attention"}  # their children hold the time


def kind_of(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, pattern in KINDS if pattern.search(lowered)), "other")


def time_by_kind(fn: Callable[[], object]) -> dict:
    """Run `fn` once under the profiler: {"total_ms", "kinds": {kind: ms}, "top": [(name, ms, calls), ...]}."""
    cuda = torch.cuda.is_available()
    per_name = {}
    for event in profiled_events(fn):
        us = _self_device_us(event) if cuda else _self_cpu_us(event)
        if us > 0:
            per_name[event.key] = (us / 1000, event.count)
    kinds: dict[str, float] = {}
    for name, (ms, _) in per_name.items():
        kinds[kind_of(name)] = kinds.get(kind_of(name), 0.0) + ms
    top = sorted(per_name.items(), key=lambda item: -item[1][0])[:12]
    return {"total_ms": sum(kinds.values()), "kinds": kinds,
            "top": [(name[:90], round(ms, 3), calls) for name, (ms, calls) in top]}


def _self_device_us(event) -> float:
    """Kernels only: aten operators also report their kernels' device time, which would count it twice."""
    from torch.autograd import DeviceType

    return float(event.self_device_time_total) if event.device_type == DeviceType.CUDA else 0.0


def _self_cpu_us(event) -> float:
    if not event.key.startswith("aten::") or event.key in CONTAINERS:
        return 0.0
    return float(event.self_cpu_time_total)
