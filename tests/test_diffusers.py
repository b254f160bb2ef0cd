"""diffusers interop on tiny pipelines built in the test (random weights, no downloads): the unpacked latent is what
each pipeline's own VAE decode path receives, normalised; early exit stops at the right step with the right sigma."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers", reason="needs diffusers (a test extra)")

import pid_sdk  # noqa: E402
from pid_sdk.errors import InputError  # noqa: E402
from pid_sdk.integrations.diffusers import StopAtSigma, decode_pipeline_latents, pipeline_latents  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "samples"))

from tiny_pipelines import PIPELINES  # noqa: E402

HEIGHT, WIDTH = 64, 96


def run(pipe, embeddings, **kwargs):
    return pipe(**embeddings, height=HEIGHT, width=WIDTH, generator=torch.Generator().manual_seed(0), **kwargs)


def vae_input(pipe, embeddings, steps: int) -> torch.Tensor:
    """What the pipeline's own decode path hands its VAE, for the same seed."""
    seen, decode = [], pipe.vae.decode
    pipe.vae.decode = lambda z, **kw: (seen.append(z), decode(z, **kw))[1]
    run(pipe, embeddings, num_inference_steps=steps, output_type="np")
    pipe.vae.decode = decode
    return seen[0][:, :, 0] if seen[0].ndim == 5 else seen[0]  # Qwen-Image's VAE takes a frame axis


def stats(pipe) -> dict | None:
    bn = getattr(pipe.vae, "bn", None)  # FLUX.2 normalises with its VAE's batch-norm statistics
    return None if bn is None else {"mean": bn.running_mean, "var": bn.running_var}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_unpacked_latents_are_what_the_vae_decode_path_receives(name):
    torch.manual_seed(0)
    pipe, embeddings = PIPELINES[name]()
    latents = run(pipe, embeddings, num_inference_steps=2, output_type="latent").images
    z, space = pipeline_latents(latents, pipe=pipe, height=HEIGHT, width=WIDTH)
    assert space == name
    expected = pid_sdk.get_latent_space(space).normalize(vae_input(pipe, embeddings, 2), stats(pipe))
    assert z.shape == expected.shape
    torch.testing.assert_close(z, expected, rtol=1e-4, atol=1e-4)


def test_early_exit_stops_at_the_right_step_with_its_sigma():
    torch.manual_seed(0)
    pipe, embeddings = PIPELINES["flux1"]()
    seen = []

    def record(p, step, timestep, kwargs):
        seen.append(kwargs["latents"].clone())
        return kwargs

    run(pipe, embeddings, num_inference_steps=4, output_type="latent", callback_on_step_end=record)
    sigmas = pipe.scheduler.sigmas.tolist()  # 1, 0.75, 0.5, 0.25, 0 for 4 unshifted steps
    stop = StopAtSigma(0.6)
    latents = run(pipe, embeddings, num_inference_steps=4, output_type="latent", callback_on_step_end=stop).images
    assert stop.step == 1 and stop.latent_sigma == pytest.approx(sigmas[2]) and stop.latent_sigma <= 0.6 < sigmas[1]
    torch.testing.assert_close(latents, seen[1], rtol=0, atol=0)  # the latent of step 2, not a later one
    image = decode_pipeline_latents(pid_sdk.Decoder.load(pid_sdk.DEMO_MODEL), latents, pipe=pipe, height=HEIGHT,
                                    width=WIDTH, latent_sigma=stop.latent_sigma, seed=0)
    assert image.shape == (1, 3, 4 * HEIGHT, 4 * WIDTH) and torch.isfinite(image).all()


def test_a_pipelines_packed_latents_decode_through_windows_as_the_unpacked_ones_do():
    torch.manual_seed(0)
    pipe, embeddings = PIPELINES["flux1"]()
    latents = run(pipe, embeddings, num_inference_steps=2, output_type="latent").images  # packed [1, 24, 64]
    dec = pid_sdk.Decoder.load(pid_sdk.DEMO_MODEL)
    image = decode_pipeline_latents(dec, latents, pipe=pipe, height=HEIGHT, width=WIDTH, window=(128, 128), seed=0)
    z, _ = pipeline_latents(latents, pipe=pipe, height=HEIGHT, width=WIDTH)
    assert image.shape == (1, 3, 4 * HEIGHT, 4 * WIDTH)
    assert torch.equal(image, dec.decode(z.float(), window=(128, 128), seed=0))
    assert not torch.equal(image, dec.decode(z.float(), seed=0))  # 256x384 as 12 windows, not the whole image


def test_refusals():
    with pytest.raises(InputError, match="does not know the latent layout"):
        pipeline_latents(torch.zeros(1, 16, 2, 2), pipe=object())
    with pytest.raises(InputError, match="needs the image size"):
        pipeline_latents(torch.zeros(1, 24, 64), latent_space="flux1")
    with pytest.raises(InputError, match="does not match the image size"):
        pipeline_latents(torch.zeros(1, 25, 64), latent_space="flux1", height=HEIGHT, width=WIDTH)
    with pytest.raises(InputError, match="needs a noise level"):
        StopAtSigma(-1)


def test_the_sample_runs_a_pipeline_into_the_demo_decoder(tmp_path):
    out = tmp_path / "sample.png"
    res = subprocess.run([sys.executable, str(ROOT / "samples" / "diffusers_to_pid.py"), str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "stopped after step 4 of 8 at sigma 0.500" in res.stdout and "(512x512)" in res.stdout and out.exists()
