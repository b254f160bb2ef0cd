import pytest
import torch

from pid_sdk.errors import InputError
from pid_sdk.latents import LATENT_SPACES, get_latent_space
from pid_sdk.model.adapter import unpatchify


def test_registry_shapes():
    expect = {"flux1": (16, 8), "sd3": (16, 8), "sdxl": (4, 8), "flux2": (128, 16), "qwenimage": (16, 8),
              "dinov2": (768, 16), "siglip": (1152, 16)}
    assert {k: (v.channels, v.factor) for k, v in LATENT_SPACES.items()} == expect


@pytest.mark.parametrize("alias,name", [("zimage", "flux1"), ("zimage-turbo", "flux1"), ("qwenimage-2512", "qwenimage"),
                                        ("flux2-klein-4b", "flux2")])
def test_aliases(alias, name):
    assert get_latent_space(alias).name == name


def test_unknown_latent_space():
    with pytest.raises(InputError, match="Unknown latent space 'sd4'"):
        get_latent_space("sd4")


@pytest.mark.parametrize("name,scale,shift",
                         [("flux1", 0.3611, 0.1159), ("sd3", 1.5305, 0.0609), ("sdxl", 0.13025, 0.0)])
def test_affine_normalisation(name, scale, shift):
    raw = torch.randn(1, LATENT_SPACES[name].channels, 4, 4)
    torch.testing.assert_close(get_latent_space(name).normalize(raw), scale * (raw - shift))


def test_qwenimage_per_channel():
    from pid_sdk.latents import QWEN_MEAN, QWEN_STD

    raw = torch.randn(1, 16, 2, 2)
    out = get_latent_space("qwenimage").normalize(raw)
    torch.testing.assert_close(out[0, 3], (raw[0, 3] - QWEN_MEAN[3]) / QWEN_STD[3])


def test_flux2_patchify_batchnorm_and_unpatchify_inverse():
    space = get_latent_space("flux2")
    raw32 = torch.randn(1, 32, 8, 6)
    patched = space.to_model_form(raw32)
    assert patched.shape == (1, 128, 4, 3)
    # (c, pi, pj) channel order: channel c*4 + i*2 + j holds raw[c, 2y+i, 2x+j]
    assert patched[0, 5 * 4 + 1 * 2 + 1, 2, 1] == raw32[0, 5, 5, 3]
    torch.testing.assert_close(unpatchify(patched, 2), raw32)
    mean, var = torch.randn(128), torch.rand(128) + 0.5
    out = space.normalize(raw32, {"mean": mean, "var": var})
    torch.testing.assert_close(out, (patched - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-4))
    with pytest.raises(InputError, match="statistics"):
        space.normalize(raw32)


def test_siglip_layernorm_and_dinov2_stats():
    raw = torch.randn(1, 1152, 2, 2) * 3 + 1
    out = get_latent_space("siglip").normalize(raw)
    torch.testing.assert_close(out.mean(1), torch.zeros(1, 2, 2), atol=1e-5, rtol=0)
    raw = torch.randn(1, 768, 2, 2)
    m, v = torch.randn(768, 2, 2), torch.rand(768, 2, 2)
    torch.testing.assert_close(get_latent_space("dinov2").normalize(raw, {"mean": m, "var": v}),
                               (raw - m) / torch.sqrt(v + 1e-5))


def test_noise_forms_and_sdxl_euler_capture():
    x0, eps, s = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), torch.tensor([0.0, 0.6])
    flow = get_latent_space("flux1").add_noise(x0, s, eps)
    torch.testing.assert_close(flow[1], 0.4 * x0[1] + 0.6 * eps[1])
    sdxl = get_latent_space("sdxl")
    torch.testing.assert_close(sdxl.add_noise(x0, s, eps)[1], 0.8 * x0[1] + 0.6 * eps[1])
    sigma_eu = torch.tensor([0.0, 0.75])
    x_eu = x0 + sigma_eu.view(-1, 1, 1, 1) * eps
    x_vp, sigma_vp = sdxl.from_capture(x_eu, sigma_eu)
    torch.testing.assert_close(sigma_vp, torch.tensor([0.0, 0.6]))
    # an Euler-frame capture x0 + s_eu eps is the VP capture sqrt(1 - s_vp^2) x0 + s_vp eps, rescaled
    torch.testing.assert_close(x_vp, sdxl.add_noise(x0, sigma_vp, eps))
    flux = get_latent_space("flux1")
    z, s2 = flux.from_capture(x_eu, sigma_eu)
    assert z is x_eu and s2 is sigma_eu


def test_output_size():
    assert get_latent_space("flux1").output_size(64, 96, 4) == (2048, 3072)
    assert get_latent_space("siglip").output_size(16, 16, 8) == (2048, 2048)
    assert get_latent_space("flux2").output_size(32, 32, 4) == (2048, 2048)


# --- what mutation testing showed no test held (scripts/mutation.py) ------------------------------------------------
def test_an_unknown_or_unhashable_name_reads_as_pinned():
    for name in ("sd4", ["flux1"]):
        with pytest.raises(InputError) as e:
            get_latent_space(name)
        assert e.value.received == name and e.value.expected.startswith("dinov2, flux1, flux2, qwenimage, sd3, ")
        assert e.value.expected.endswith(", zimage, zimage-turbo")
        assert e.value.fix == "pass latent_space= one of the names above (the LDM that produced the latent)"


@pytest.mark.parametrize("stats,received", [(None, None), ({}, None), ({"mean": torch.zeros(128)}, ["mean"]),
                                            ({"var": torch.ones(128)}, ["var"])])
def test_missing_statistics_say_which_were_given(stats, received):
    with pytest.raises(InputError) as e:
        get_latent_space("flux2").normalize(torch.zeros(1, 128, 2, 2), stats)
    given = f"  received: {received}\n" if received else ""  # nothing given: no received line
    assert str(e.value) == ("Normalising a raw flux2 latent needs the encoder's statistics.\n" + given +
                            "  expected: stats={'mean': tensor, 'var': tensor} from your VAE / encoder\n"
                            "  fix: pass the statistics, or pass the latent as the LDM produces it (normalized=True)")


def test_siglip_layernorm_uses_eps_1e_6():
    raw = torch.randn(1, 1152, 2, 2, generator=torch.Generator().manual_seed(0)) * 1e-3  # variance ~ eps
    centred = raw - raw.mean(1, keepdim=True)
    expected = centred / torch.sqrt(centred.pow(2).mean(1, keepdim=True) + 1e-6)
    torch.testing.assert_close(get_latent_space("siglip").normalize(raw), expected, rtol=1e-4, atol=1e-5)


def test_normalised_latents_are_float32_on_the_latents_device():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert get_latent_space("flux1").normalize(torch.zeros(1, 16, 2, 2)).dtype == torch.float32
        assert get_latent_space("qwenimage").normalize(torch.zeros(1, 16, 2, 2)).dtype == torch.float32
    finally:
        torch.set_default_dtype(before)
    meta = torch.zeros(1, 16, 2, 2, device="meta")
    assert get_latent_space("qwenimage").normalize(meta).device.type == "meta"
    latent, sigma = get_latent_space("sdxl").from_capture(torch.zeros(1, 4, 2, 2, device="meta"), torch.tensor([0.5]))
    assert latent.device.type == "meta" and sigma.device.type == "cpu"
