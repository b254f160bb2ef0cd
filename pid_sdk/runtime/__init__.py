"""Backends (one small class each, imported lazily where they need optional packages) and engine selection."""

from pid_sdk.runtime.torch_backend import TorchBackend, TorchRuntime

__all__ = ["TorchBackend", "TorchRuntime"]
