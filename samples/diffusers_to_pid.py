"""A diffusers pipeline's latent into PiD, end to end: a tiny FLUX.1 pipeline (random weights, built here, no
download) generates a 128x128 latent, stops early at sigma 0.5, and the embedded demo model decodes it to 512x512.
With a real pipeline, only the first line changes (FluxPipeline.from_pretrained(...)).

    .venv/bin/python samples/diffusers_to_pid.py out.png
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pid_sdk  # noqa: E402
from pid_sdk.integrations.diffusers import StopAtSigma, decode_pipeline_latents  # noqa: E402
from tiny_pipelines import flux1  # noqa: E402

torch.manual_seed(0)
pipe, embeddings = flux1()
stop = StopAtSigma(0.5)  # the paper's early exit: PiD finishes what the LDM has not
latents = pipe(**embeddings, height=128, width=128, num_inference_steps=8, output_type="latent",
               generator=torch.Generator().manual_seed(0), callback_on_step_end=stop).images
decoder = pid_sdk.Decoder.load(pid_sdk.DEMO_MODEL)
(image,) = decode_pipeline_latents(decoder, latents, pipe=pipe, height=128, width=128,
                                   latent_sigma=stop.latent_sigma, seed=0, output="pil")
out = Path(sys.argv[1] if len(sys.argv) > 1 else "diffusers_to_pid.png")
image.save(out)
print(f"stopped after step {stop.step + 1} of 8 at sigma {stop.latent_sigma:.3f}; "
      f"wrote {out} ({image.width}x{image.height})")
