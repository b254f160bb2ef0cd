"""ComfyUI nodes over pid-sdk: load a model (artefact, checkpoint, engine folder or registry name), decode a LATENT
into an IMAGE, through windows when the image is larger than the model was trained at.

ComfyUI finds node packs in `custom_nodes/`: `samples/comfyui/pid_sdk_nodes/` is one (copy or link it there, in an
environment where pid-sdk is installed). The nodes follow ComfyUI's node contract: `INPUT_TYPES`, `RETURN_TYPES`,
`FUNCTION`, `CATEGORY`, and the pack's `NODE_CLASS_MAPPINGS`. ComfyUI's LATENT is `{"samples": [B, C, h, w]}` as its
VAE encoder gives it (raw: not yet scaled for the diffusion model), its IMAGE `[B, H, W, 3]` float in [0, 1].
"""

from __future__ import annotations

import torch

SPACES = ("model's own", "flux1", "sd3", "sdxl", "flux2", "qwenimage")
WINDOWS = ("auto when larger than trained", "whole image", "windows")


class PiDLoader:
    """A decoder from a path or a registry name (`pid-sdk models`), loaded once per input."""

    CATEGORY = "pid-sdk"
    RETURN_TYPES = ("PID_DECODER",)
    RETURN_NAMES = ("decoder",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802 - ComfyUI's name
        return {"required": {"model": ("STRING", {"default": "flux1-2k"})},
                "optional": {"max_memory": ("STRING", {"default": ""}), "device": (("auto", "cuda", "cpu"),)}}

    def load(self, model: str, max_memory: str = "", device: str = "auto"):
        from pid_sdk.decoder import Decoder

        dev = None if device == "auto" else device
        return (Decoder.load(model, device=dev, max_memory=max_memory or None),)


class PiDDecode:
    """LATENT -> IMAGE with PiD: 4x the latent's pixel size in 4 steps, windows for sizes past the trained ones."""

    CATEGORY = "pid-sdk"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802 - ComfyUI's name
        return {"required": {"decoder": ("PID_DECODER",), "samples": ("LATENT",),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1}),
                             "latent_space": (SPACES,), "windows": (WINDOWS,)},
                "optional": {"latent_is_normalized": ("BOOLEAN", {"default": False})}}

    def decode(self, decoder, samples: dict, seed: int, latent_space: str = SPACES[0], windows: str = WINDOWS[0],
               latent_is_normalized: bool = False):
        latent = samples["samples"]
        space = None if latent_space == SPACES[0] else latent_space
        window = {"whole image": None, "windows": "auto"}.get(windows, _auto_if_large(decoder, latent, space))
        image = decoder.decode(latent, latent_space=space, seed=seed, window=window,
                               normalized=latent_is_normalized)  # [B, 3, H, W] in [-1, 1]
        return (((image + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).contiguous(),)  # ComfyUI's [B, H, W, 3] in [0, 1]


def _auto_if_large(decoder, latent: torch.Tensor, space: str | None):
    """"auto" where the output has more pixels than the largest trained size, else None (the whole image)."""
    height, width = decoder.output_size(tuple(latent.shape[-2:]), space)
    largest = max(h * w for h, w in decoder.config.trained_sizes)
    return "auto" if height * width > largest else None


NODE_CLASS_MAPPINGS = {"PiDLoader": PiDLoader, "PiDDecode": PiDDecode}
NODE_DISPLAY_NAME_MAPPINGS = {"PiDLoader": "Load PiD decoder", "PiDDecode": "PiD Decode (latent -> image)"}
