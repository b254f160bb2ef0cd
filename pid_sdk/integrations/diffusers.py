"""From a diffusers pipeline's `output_type="latent"` to `Decoder.decode`, and early exit at a chosen sigma.

A pipeline returns its latent in the normalised form its LDM works in, which is the form PiD decodes, but laid
out its own way: FLUX.1 and Qwen-Image as packed sequences of 2x2 patches `[B, L, 4C]`, FLUX.2 as a sequence of
its 128-channel patchified latent `[B, L, 128]`, SD3 and SDXL as `[B, C, h, w]`. `pipeline_latents` undoes the
layout exactly as each pipeline's own VAE decode path does before it denormalises; nothing here imports diffusers.
"""

from __future__ import annotations

from torch import Tensor

from pid_sdk.errors import InputError

PIPELINE_SPACES = {  # pipeline class name -> PiD latent space
    "FluxPipeline": "flux1", "FluxImg2ImgPipeline": "flux1", "FluxInpaintPipeline": "flux1",
    "Flux2Pipeline": "flux2", "StableDiffusion3Pipeline": "sd3", "StableDiffusion3Img2ImgPipeline": "sd3",
    "StableDiffusionXLPipeline": "sdxl", "StableDiffusionXLImg2ImgPipeline": "sdxl", "QwenImagePipeline": "qwenimage",
}
PACKED_2X2 = ("flux1", "qwenimage")


def latent_space_of(pipe) -> str:
    name = type(pipe).__name__
    if name not in PIPELINE_SPACES:
        raise InputError(f"pid-sdk does not know the latent layout of {name}.", received=name,
                         expected=", ".join(sorted(PIPELINE_SPACES)),
                         fix="pass latent_space= and a [B, C, h, w] latent in the LDM's normalised form")
    return PIPELINE_SPACES[name]


def pipeline_latents(latents: Tensor, *, pipe=None, latent_space: str | None = None, height: int | None = None,
                     width: int | None = None) -> tuple[Tensor, str]:
    """(the latent as PiD takes it, its latent space) from what `pipe(..., output_type="latent")` returned.
    `height` and `width` are the image size the pipeline was asked for (packed layouts need them)."""
    space = latent_space or latent_space_of(pipe)
    if not isinstance(latents, Tensor):
        raise InputError("latents must be the tensor the pipeline returned.", received=type(latents).__name__,
                         fix="call the pipeline with output_type='latent' and pass result.images")
    if latents.ndim == 5 and latents.shape[2] == 1:  # Qwen-Image's unpacked form carries a frame axis
        latents = latents[:, :, 0]
    if latents.ndim == 4:
        return latents, space
    if latents.ndim != 3 or height is None or width is None:
        raise InputError("A packed [B, L, C] latent needs the image size it was generated at.",
                         received=f"shape {tuple(latents.shape)}, height={height}, width={width}",
                         expected="height= and width= as passed to the pipeline", fix="pass height= and width=")
    scale = getattr(pipe, "vae_scale_factor", 8)
    if space in PACKED_2X2:
        return _unpack_2x2(latents, height, width, scale), space
    if space == "flux2":
        return _unpack_rows(latents, height // (2 * scale), width // (2 * scale)), space
    raise InputError(f"{space} latents are not packed.", received=f"shape {tuple(latents.shape)}",
                     expected="[B, C, h, w]", fix="pass the latent as the pipeline returned it")


def _unpack_2x2(latents: Tensor, height: int, width: int, vae_scale: int) -> Tensor:
    b, length, channels = latents.shape
    h, w = 2 * (int(height) // (vae_scale * 2)), 2 * (int(width) // (vae_scale * 2))
    _check_length(latents, (h // 2) * (w // 2), height, width)
    x = latents.view(b, h // 2, w // 2, channels // 4, 2, 2)  # [B, h/2, w/2, C, 2, 2]
    x = x.permute(0, 3, 1, 4, 2, 5)  # [B, C, h/2, 2, w/2, 2]
    return x.reshape(b, channels // 4, h, w)  # [B, C, h, w]


def _unpack_rows(latents: Tensor, h: int, w: int) -> Tensor:
    b, length, channels = latents.shape
    _check_length(latents, h * w, h, w)
    return latents.view(b, h, w, channels).permute(0, 3, 1, 2)  # [B, C, h, w]


def _check_length(latents: Tensor, want: int, height: int, width: int) -> None:
    if latents.shape[1] != want:
        raise InputError("The packed latent does not match the image size given.",
                         received=f"{latents.shape[1]} tokens for height={height}, width={width}",
                         expected=f"{want} tokens", fix="pass the height and width the pipeline generated at")


def decode_pipeline_latents(decoder, latents: Tensor, *, pipe=None, height: int | None = None,
                            width: int | None = None, latent_space: str | None = None, **decode_kwargs):
    """`decoder.decode` of a pipeline's latent output (early exits: pass the `latent_sigma` StopAtSigma found)."""
    z, space = pipeline_latents(latents, pipe=pipe, latent_space=latent_space, height=height, width=width)
    return decoder.decode(z.float(), latent_space=space, **decode_kwargs)


class StopAtSigma:
    """`callback_on_step_end` that ends a pipeline's loop at the first step whose latent has noise level <= `sigma`
    (the paper's early termination: PiD decodes the partially denoised latent). After the call, `latent_sigma` is
    that latent's noise level in the scheduler's own frame (flow matching: x = (1-s) x0 + s eps; SDXL's Euler:
    x0 + s eps), and the pipeline returns that latent.

        stop = StopAtSigma(0.4)
        out = pipe(..., output_type="latent", callback_on_step_end=stop)
        image = decode_pipeline_latents(decoder, out.images, pipe=pipe, height=H, width=W,
                                        latent_sigma=stop.latent_sigma)
    """

    def __init__(self, sigma: float):
        if not 0 <= sigma < 1e4:
            raise InputError("StopAtSigma needs a noise level.", received=sigma, expected="a number >= 0",
                             fix="e.g. StopAtSigma(0.4)")
        self.sigma, self.latent_sigma, self.step = float(sigma), 0.0, None

    def __call__(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        if self.step is None:
            reached = float(pipe.scheduler.sigmas[step + 1])  # the level of the latent this step produced
            if reached <= self.sigma:
                self.step, self.latent_sigma = step, reached
                pipe._interrupt = True  # diffusers pipelines skip every later step and return the latent as is
        return callback_kwargs


__all__ = ["decode_pipeline_latents", "pipeline_latents", "StopAtSigma", "PIPELINE_SPACES"]
