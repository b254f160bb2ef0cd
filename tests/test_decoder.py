import numpy as np
import pytest
import torch
from conftest import real_image

import pid_sdk
from pid_sdk import Decoder
from pid_sdk.config import OFFICIAL_PRESETS, PRESETS
from pid_sdk.errors import ConfigError, InputError, PiDError
from pid_sdk.tae import TinyAutoencoder

PID_TINY = [f"tiny-{n}" for n in OFFICIAL_PRESETS if PRESETS[n].adapter is not None]


@pytest.fixture(scope="module")
def tiny():
    return Decoder.load(preset="tiny", seed=0)


def test_public_surface_is_small():
    assert len(pid_sdk.__all__) <= 16
    for name in pid_sdk.__all__:
        assert hasattr(pid_sdk, name)


@pytest.mark.parametrize("name", PID_TINY)
def test_every_family_decodes(name):
    dec = Decoder.load(preset=name)
    space = pid_sdk.get_latent_space(dec.latent_space)
    h = 2 if dec.config.adapter.sr_scale == 8 else 4
    z = torch.randn(1, space.channels, h, h)
    img = dec.decode(z, seed=0, steps=2)
    side = h * space.factor * dec.config.adapter.sr_scale
    assert img.shape == (1, 3, side, side) and img.abs().max() <= 1 and torch.isfinite(img).all()


def test_output_forms_batches_and_seeds(tiny):
    z = torch.randn(2, 16, 4, 6)
    a = tiny.decode(z, seed=3)
    assert a.shape == (2, 3, 128, 192)
    torch.testing.assert_close(tiny.decode(z, seed=3), a, rtol=0, atol=0)
    assert not torch.equal(tiny.decode(z, seed=4), a)
    arr = tiny.decode(z, seed=3, output="numpy")
    assert arr.dtype == np.uint8 and arr.shape == (2, 128, 192, 3)
    np.testing.assert_array_equal(arr, ((a + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    pil = tiny.decode(z[0], seed=3, output="pil")
    assert len(pil) == 1 and pil[0].size == (192, 128)
    single = tiny.decode(z[:1], seed=3)
    assert single.shape == (1, 3, 128, 192)


def test_numpy_and_half_precision_latents_are_accepted(tiny):
    z = torch.randn(1, 16, 4, 4)
    ref = tiny.decode(z, seed=0)
    torch.testing.assert_close(tiny.decode(z.numpy(), seed=0), ref)
    assert tiny.decode(z.half(), seed=0).shape == ref.shape


def test_samplers_and_steps(tiny):
    z = torch.randn(1, 16, 4, 4)
    sde, ode = tiny.decode(z, seed=0), tiny.decode(z, seed=0, sampler="ode")
    assert not torch.equal(sde, ode)
    assert tiny.decode(z, seed=0, steps=1).shape == sde.shape
    teacher = tiny.decode(z, seed=0, sampler="teacher", steps=3, negative_embeddings=torch.zeros(1, 16, 32))
    assert teacher.shape == sde.shape
    unguided = tiny.decode(z, seed=0, sampler="teacher", steps=3, guidance=1.0)  # no negative needed at guidance 1
    negative = torch.randn(1, 16, 32)
    torch.testing.assert_close(unguided, tiny.decode(z, seed=0, sampler="teacher", steps=3, guidance=1.0,
                                                     negative_embeddings=negative), rtol=0, atol=0)
    guided = tiny.decode(z, seed=0, sampler="teacher", steps=3, negative_embeddings=negative)
    assert not torch.equal(unguided, guided)


def test_early_termination_uses_latent_sigma(tiny):
    z = torch.randn(1, 16, 4, 4)
    clean, noisy = tiny.decode(z, seed=0), tiny.decode(z, seed=0, latent_sigma=0.4)
    assert (clean - noisy).abs().max() > 1e-4
    per_sample = tiny.decode(torch.cat([z, z]), seed=[0, 0], latent_sigma=torch.tensor([0.0, 0.4]))
    torch.testing.assert_close(per_sample, torch.cat([clean, noisy]), rtol=0, atol=1e-5)  # each item its own sigma


def test_each_sampler_runs_its_own_default_step_count(tiny):
    z = torch.randn(1, 16, 2, 2)
    for sampler, steps in (("sde", 4), ("ode", 4), ("teacher", 50)):
        calls = []
        tiny.decode(z, seed=0, sampler=sampler, guidance=1.0, on_step=lambda i, n: calls.append((i, n)))
        assert calls == [(i + 1, steps) for i in range(steps)], sampler


def test_sdxl_capture_is_converted_from_the_euler_frame():
    from pid_sdk.sampling import sample_student

    dec = Decoder.load(preset="tiny-pid-2kto4k-sdxl")
    z = torch.randn(1, 4, 4, 4)
    got = dec.decode(z * 1.25, latent_sigma=0.75, seed=0)  # Euler frame: /sqrt(0.75^2 + 1) = /1.25, sigma 0.6
    backend = dec.runtime.backend(text=torch.zeros(1, 16, 32), latent=z, latent_sigma=torch.tensor([0.6]),
                                  height=128, width=128)
    want = sample_student(lambda x, s: backend.infer({"x": x, "sigma": s})["v"], (1, 3, 128, 128),
                          generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)  # z * 1.25 / 1.25 rounds


def test_text_embeddings_change_the_output(tiny):
    z = torch.randn(1, 16, 4, 4)
    base = tiny.decode(z, seed=0)
    with_text = tiny.decode(z, seed=0, text_embeddings=torch.randn(1, 10, 32))
    assert (base - with_text).abs().max() > 1e-4


@pytest.mark.parametrize("tae,preset,space", [
    ("taef1", "tiny-pid-2k", "flux1"),
    ("taesd3", "tiny-pid-2kto4k", "sd3"),
    ("taesdxl", "tiny-pid-2kto4k-sdxl", "sdxl"),
    ("taef2", "tiny-pid-2k-flux2", "flux2"),
    ("taef2", "tiny-pid-2kto4k-v1.5-flux2", "flux2"),
])
def test_real_latents_from_real_images(tae_dir, tae, preset, space):
    codec = TinyAutoencoder(tae_dir, tae)
    images = torch.cat([real_image("astronaut", 64), real_image("coffee", 64)])
    latents = codec.encode(images)  # the normalised latent the LDM would produce
    dec = Decoder.load(preset=preset)
    out = dec.decode(latents, latent_space=space, seed=0)
    assert out.shape == (2, 3, 256, 256) and torch.isfinite(out).all()
    assert (out[0] - out[1]).abs().mean() > 1e-3  # the two photographs decode differently


# --- bad input ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("latent,match", [
    (torch.randn(1, 15, 4, 4), "wrong number of channels"),
    (torch.randn(16, 4), "wrong rank"),
    (torch.randn(1, 1, 16, 4, 4), "wrong rank"),
    (torch.full((1, 16, 4, 4), float("nan")), "NaN or Inf"),
    (torch.full((1, 16, 4, 4), float("inf")), "NaN or Inf"),
    (torch.ones(1, 16, 4, 4, dtype=torch.int64), "integer or boolean dtype"),
    (torch.randn(1, 16, 0, 4), "empty"),
    ([[1.0]], "must be a tensor"),
])
def test_bad_latents(tiny, latent, match):
    with pytest.raises(InputError, match=match) as err:
        tiny.decode(latent)
    assert "received" in str(err.value)
    with pytest.raises(InputError, match=match):  # check() refuses what decode() refuses, without decoding
        tiny.check(latent)


def test_check_passes_a_good_latent_and_refuses_a_bad_sigma(tiny):
    assert tiny.check(torch.randn(2, 16, 4, 4)) is None
    with pytest.raises(InputError, match="latent_sigma"):
        tiny.check(torch.randn(2, 16, 4, 4), latent_sigma=[0.1, 0.2, 0.3])


def test_bad_arguments(tiny):
    z = torch.randn(1, 16, 4, 4)
    with pytest.raises(InputError, match="Unknown latent space"):
        tiny.decode(z, latent_space="sd9")
    with pytest.raises(InputError, match="decodes 16-channel latents"):
        tiny.decode(torch.randn(1, 4, 4, 4), latent_space="sdxl")
    with pytest.raises(InputError, match="text embeddings have the wrong shape"):
        tiny.decode(z, text_embeddings=torch.randn(1, 5, 31))
    with pytest.raises(InputError, match="text embeddings have the wrong shape"):
        tiny.decode(z, text_embeddings=torch.randn(1, 17, 32))  # longer than txt_max_length
    with pytest.raises(InputError, match="latent_sigma"):
        tiny.decode(z, latent_sigma=1.5)
    with pytest.raises(InputError, match="latent_sigma"):
        tiny.decode(z, latent_sigma=float("nan"))
    with pytest.raises(InputError, match="steps"):
        tiny.decode(z, steps=0)
    with pytest.raises(InputError, match="Unknown sampler"):
        tiny.decode(z, sampler="euler")
    with pytest.raises(ConfigError, match="text encoder"):
        tiny.decode(z, prompt="a cat")
    with pytest.raises(InputError, match="negative embedding"):
        tiny.decode(z, sampler="teacher")


def test_size_limits():
    dec = Decoder.load(preset="tiny-pid-2k-flux2")
    with pytest.raises(InputError, match="even height and width"):
        dec.decode(torch.randn(1, 32, 5, 4))
    with pytest.raises(InputError, match="too large"):
        dec.decode(torch.randn(1, 128, 160, 4))  # 160 * 16 * 4 = 10240 px


def test_raw_latents_are_normalised_when_asked(tiny):
    raw = torch.randn(1, 16, 4, 4) * 3 + 0.1
    norm = pid_sdk.get_latent_space("flux1").normalize(raw)
    torch.testing.assert_close(tiny.decode(raw, normalized=False, seed=0), tiny.decode(norm, seed=0))
    flux2 = Decoder.load(preset="tiny-pid-2k-flux2")
    with pytest.raises(InputError, match="statistics"):
        flux2.decode(torch.randn(1, 32, 4, 4), normalized=False)
    stats = {"mean": torch.zeros(128), "var": torch.ones(128) - 1e-4}
    torch.testing.assert_close(flux2.decode(torch.randn(1, 32, 4, 4, generator=torch.Generator().manual_seed(0)),
                                            normalized=False, stats=stats, seed=0),
                               flux2.decode(torch.randn(1, 32, 4, 4, generator=torch.Generator().manual_seed(0)),
                                            seed=0), rtol=1e-4, atol=1e-4)


def test_bad_devices():
    with pytest.raises(ConfigError, match="Unknown device"):
        Decoder.load(preset="tiny", device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            Decoder.load(preset="tiny", device="cuda")


def test_backbone_alone_cannot_decode():
    with pytest.raises(ConfigError, match="bare PixelDiT"):
        Decoder.load(preset="tiny-pixeldit-1.3b")


def test_every_error_is_a_pid_error():
    assert issubclass(InputError, PiDError) and issubclass(ConfigError, PiDError)


def test_tiny_autoencoder_moves_both_halves(tae_dir):
    tae = TinyAutoencoder(tae_dir, "taef1")
    assert tae.to("meta") is tae
    assert {p.device.type for m in (tae.encoder, tae.decoder) for p in m.parameters()} == {"meta"}


def test_a_seed_per_latent_decodes_each_as_it_would_alone(tiny):
    z = torch.randn(3, 16, 2, 2)
    batch = tiny.decode(z, seed=[5, 6, 7])
    for i, seed in enumerate([5, 6, 7]):
        torch.testing.assert_close(batch[i:i + 1], tiny.decode(z[i:i + 1], seed=seed), rtol=0, atol=1e-5)
    with pytest.raises(InputError, match="one seed per latent"):
        tiny.decode(z, seed=[1, 2])
