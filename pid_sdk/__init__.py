"""pid-sdk: run the PiD pixel diffusion decoder in production.

    import pid_sdk
    dec = pid_sdk.Decoder.load("path/to/model")          # artefact folder, official checkpoint, or preset=
    img = dec.decode(latent, latent_space="flux1")        # -> image 4x the latent's pixel size
"""

__version__ = "0.1.0"

from pid_sdk.checkpoints import load_checkpoint, save_artefact
from pid_sdk.config import DEMO_MODEL, PRESETS, PiDConfig, get_preset
from pid_sdk.decoder import Decoder
from pid_sdk.errors import PiDError
from pid_sdk.latents import LATENT_SPACES, get_latent_space
from pid_sdk.model import build_model
from pid_sdk.runtime.speed import Speed
from pid_sdk.sampling import sample_student, sample_teacher

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
