"""Decode a latent file into a PNG with the public API."""

import argparse

from safetensors.torch import load_file

import pid_sdk

parser = argparse.ArgumentParser()
parser.add_argument("--model", default=pid_sdk.DEMO_MODEL, help="artefact folder or checkpoint (default: the demo)")
parser.add_argument("--latent", default="samples/sample_latent_flux1.safetensors")
parser.add_argument("--output", default="decoded.png")
args = parser.parse_args()

decoder = pid_sdk.Decoder.load(args.model)
latent = load_file(args.latent)["latent"]  # [16, 16, 16]: a FLUX.1 latent of a 128 x 128 photograph
try:
    images = decoder.decode(latent, latent_space="flux1", seed=0, output="pil")  # 4 steps -> 512 x 512
except pid_sdk.PiDError as err:
    raise SystemExit(f"error: {err}")
images[0].save(args.output)
print(f"wrote {args.output} {images[0].size}")
