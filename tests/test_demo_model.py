"""The embedded demo model: a real artefact that loads strictly and decodes the bundled real latent into a picture
that follows the photograph it came from."""

from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.torch import load_file

import pid_sdk

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "pid_sdk" / "data" / "demo-flux1"


def test_the_public_name_points_at_the_embedded_model():
    assert pid_sdk.DEMO_MODEL == DEMO.resolve() and (DEMO / "manifest.json").is_file()


# Measured on the 2-core CPU machine (2026-12-06): 27.55-27.56 dB for seeds 0-3 at the photograph's 128x128.
# The floor refuses what merely resembles it: the decode through a 64x64 thumbnail scores 27.06 dB, 32x32 25.3,
# 8x8 20.6 (the old correlation > 0.7 passed that one).
PSNR_FLOOR = 27.3


def psnr(image: Image.Image, source: np.ndarray) -> float:
    err = np.asarray(image.resize(source.shape[1::-1], Image.BOX), dtype=np.float64) - source
    return float(10 * np.log10(255**2 / np.mean(err**2)))


def through_thumbnail(image: Image.Image, side: int) -> Image.Image:
    return image.resize((side, side), Image.BOX).resize(image.size, Image.BICUBIC)


def test_demo_model_decodes_the_sample_like_its_photograph():
    dec = pid_sdk.Decoder.load(DEMO)
    assert dec.config.name == "demo-flux1" and dec.latent_space == "flux1"
    z = load_file(str(ROOT / "samples" / "sample_latent_flux1.safetensors"))["latent"]
    img = dec.decode(z, seed=0, output="pil")[0]
    assert img.size == (512, 512)
    source = np.asarray(Image.open(ROOT / "samples" / "sample_source.png").convert("RGB"), dtype=np.float64)
    assert psnr(img, source) > PSNR_FLOOR
    for side in (8, 32, 64):  # negative controls: less detail than the model gives must fail the same floor
        assert psnr(through_thumbnail(img, side), source) < PSNR_FLOOR, side


def test_sample_latent_is_the_taef1_latent_of_its_photograph(tae_dir):
    """Pins the sample's form: the taef1 encoding, which is already the normalised FLUX.1 latent an LDM delivers."""
    import torch

    from pid_sdk.tae import TinyAutoencoder

    rgb = np.asarray(Image.open(ROOT / "samples" / "sample_source.png").convert("RGB"), dtype=np.float32) / 255
    expected = TinyAutoencoder(tae_dir, "taef1").encode(torch.from_numpy(rgb).permute(2, 0, 1)[None])[0]
    z = load_file(str(ROOT / "samples" / "sample_latent_flux1.safetensors"))["latent"]
    torch.testing.assert_close(z, expected, rtol=1e-4, atol=1e-4)
    assert abs(z.std().item() - 1) < 0.5  # unit scale: a raw VAE latent would be ~2.8x larger
