"""Regenerate samples/sample_latent_flux1.safetensors: a real FLUX.1 latent of a real photograph.

The photograph is scikit-image's `chelsea` (a cat), centre-cropped to a square and resized to 128x128, encoded with
the taef1 encoder from shared/data/tae. Run from the repository root:  python samples/make_sample_latent.py
"""


import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data

from pid_sdk.tae import SHARED_TAE_DIR, TinyAutoencoder


def main() -> None:
    img = Image.fromarray(data.chelsea())
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((128, 128), Image.LANCZOS)
    rgb = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255
    latent = TinyAutoencoder(SHARED_TAE_DIR, "taef1").encode(rgb)[0]  # [16, 16, 16]
    save_file({"latent": latent.contiguous()}, "samples/sample_latent_flux1.safetensors",
              metadata={"latent_space": "flux1", "source": "skimage.data.chelsea, 128x128, taef1 encoder"})
    img.save("samples/sample_source.png")
    print("latent", tuple(latent.shape), float(latent.mean()), float(latent.std()))


if __name__ == "__main__":
    main()
