from pid_sdk.runtime.torch_backend import TorchBackend

__all__ = ["TorchBackend"]
