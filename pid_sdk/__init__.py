"""pid-sdk: run the PiD pixel diffusion decoder in production.

    import pid_sdk
    dec = pid_sdk.Decoder.load("path/to/model")          # artefact folder, official checkpoint, or preset=
    img = dec.decode(latent, latent_space="flux1")        # -> image 4x the latent's pixel size
"""

__version__ = "0.1.0"

from pid_sdk.errors import PiDError

# The rest is imported on first use (PEP 562), so `pid-sdk --help` answers without loading torch.
_LAZY = {"load_checkpoint": "checkpoints", "save_artefact": "checkpoints", "DEMO_MODEL": "config", "PRESETS": "config",
         "PiDConfig": "config", "get_preset": "config", "Decoder": "decoder", "LATENT_SPACES": "latents",
         "get_latent_space": "latents", "build_model": "model", "Speed": "runtime.speed",
         "sample_student": "sampling", "sample_teacher": "sampling"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'pid_sdk' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"pid_sdk.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Decoder",
    "Speed",
    "PiDError",
    "PiDConfig",
    "PRESETS",
    "DEMO_MODEL",
    "get_preset",
    "build_model",
    "load_checkpoint",
    "save_artefact",
    "LATENT_SPACES",
    "get_latent_space",
    "sample_student",
    "sample_teacher",
    "__version__",
]
