import math

import pytest
import torch
import torch.nn.functional as F

from pid_sdk.config import OFFICIAL_PRESETS, PRESETS
from pid_sdk.model import PiD, build_model, randomize
from pid_sdk.model.adapter import align_to_grid, unpatchify
from pid_sdk.model.layers import pixel_sincos, timestep_features

TINY = [f"tiny-{n}" for n in OFFICIAL_PRESETS]


def latent_for(cfg, out_hw=(128, 256), batch=2, seed=0):
    a = cfg.adapter
    g = torch.Generator().manual_seed(seed)
    h, w = (s // (a.latent_factor * a.sr_scale) for s in out_hw)
    return torch.randn(batch, a.latent_channels, h, w, generator=g)


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_shapes_and_finite(name):
    cfg = PRESETS[name]
    model = randomize(build_model(cfg), 0).eval()
    x = torch.randn(2, 3, 128, 256)
    text = torch.randn(2, 5, cfg.backbone.txt_embed_dim)
    with torch.no_grad():
        if cfg.adapter is None:
            v = model(x, torch.tensor(0.5), text)
        else:
            v = model(x, torch.tensor([0.3, 0.9]), text, latent_for(cfg), torch.tensor([0.0, 0.4]))
    assert v.shape == x.shape and torch.isfinite(v).all()


def test_prepared_path_equals_forward():
    cfg = PRESETS["tiny-pid-2kto4k-v1.5"]
    model = randomize(build_model(cfg), 1).eval()
    x, text, z = torch.randn(2, 3, 64, 96), torch.randn(2, 7, 32), latent_for(cfg, (64, 96))
    sigma, ls = torch.tensor([0.2, 0.7]), torch.tensor([0.1, 0.5])
    with torch.no_grad():
        ref = model(x, sigma, text, z, ls)
        geo = model.geometry(64, 96, 7, "cpu")
        out = model.denoise(x, sigma, model.embed_text(text), geo, model.encode_latent(z, ls, geo))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_latent_and_latent_sigma_change_the_output():
    cfg = PRESETS["tiny"]
    model = randomize(build_model(cfg), 2).eval()
    x, text, z = torch.randn(1, 3, 64, 64), torch.randn(1, 4, 32), latent_for(cfg, (64, 64), 1)
    with torch.no_grad():
        a = model(x, torch.tensor(0.5), text, z, torch.tensor(0.0))
        b = model(x, torch.tensor(0.5), text, z + 1, torch.tensor(0.0))
        c = model(x, torch.tensor(0.5), text, z, torch.tensor(0.8))
    assert (a - b).abs().max() > 1e-3 and (a - c).abs().max() > 1e-3


def test_text_beyond_max_length_is_ignored():
    cfg = PRESETS["tiny-pixeldit-1.3b"]
    model = randomize(build_model(cfg), 3).eval()
    x = torch.randn(1, 3, 32, 32)
    text = torch.randn(1, 20, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.tensor(0.5), text), model(x, torch.tensor(0.5), text[:, :16]))


@pytest.mark.parametrize("v15", [False, True])
def test_training_init_gates_start_at_sigmoid_2_minus_5_sigma(v15):
    cfg = PRESETS["tiny-pid-2kto4k-v1.5" if v15 else "tiny-pid-2k"]
    torch.manual_seed(0)
    model = build_model(cfg)
    model.init_weights()
    gate = model.lq_proj.gate_modules[0]
    s = torch.zeros(3, 10, cfg.backbone.hidden_size)
    sigma = torch.tensor([0.0, 0.4, 1.0])
    with torch.no_grad():
        g = gate.gate(s, gate.offset(torch.zeros_like(s), sigma))
    expect = torch.sigmoid(2 - 5 * sigma)
    torch.testing.assert_close(g[:, 0, 0], expect)
    assert g.shape[-1] == (1 if v15 else cfg.backbone.hidden_size)
    assert torch.all(model.lq_proj.output_heads[0].weight == 0)  # zero heads: PiD starts as the backbone


def test_zero_heads_make_the_latent_irrelevant():
    cfg = PRESETS["tiny-pid-2kto4k-v1.5"]
    model = randomize(build_model(cfg), 4).eval()
    model.init_weights()
    x, text = torch.randn(1, 3, 64, 64), torch.randn(1, 4, 32)
    with torch.no_grad():
        a = model(x, torch.tensor(0.5), text, latent_for(cfg, (64, 64), 1, 0), torch.tensor(0.0))
        b = model(x, torch.tensor(0.5), text, latent_for(cfg, (64, 64), 1, 1), torch.tensor(0.0))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name,ratio", [("tiny-pid-2k", 2), ("tiny-pid-2kto4k-sdxl", 2), ("tiny-pid-2k-flux2", 4),
                                        ("tiny-pid-2k-dinov2", 4), ("tiny-pid-2k-sr8x-siglip", 8),
                                        ("tiny-pid-2kto4k-v1.5-flux2", 2)])
def test_adapter_alignment_ratio_per_latent_space(name, ratio):
    assert PRESETS[name] and build_model(PRESETS[name]).lq_proj.ratio == ratio


def test_alignment_nearest_identity_and_fold():
    z = torch.arange(2 * 3 * 3, dtype=torch.float32).view(1, 2, 3, 3)
    up = align_to_grid(z, (6, 6), ratio=2)
    torch.testing.assert_close(up, z.repeat_interleave(2, -1).repeat_interleave(2, -2))
    assert align_to_grid(z, (3, 3), ratio=1) is z
    assert align_to_grid(z, (4, 4), ratio=1).shape == (1, 2, 4, 4)  # bilinear when sizes differ
    big = torch.randn(1, 2, 8, 8)
    folded = align_to_grid(big, (4, 4), ratio=0.5)
    # channel c*f*f + i*f + j holds z[c, 2y+i, 2x+j]
    assert folded.shape == (1, 8, 4, 4)
    assert folded[0, 1 * 4 + 1 * 2 + 0, 3, 2] == big[0, 1, 7, 4]


def test_alignment_legacy_floor_rule_for_inexact_grids():
    z = torch.arange(3, dtype=torch.float32).view(1, 1, 1, 3)
    out = align_to_grid(z, (1, 7), ratio=2)
    assert out[0, 0, 0].tolist() == [z[0, 0, 0, math.floor(d * 3 / 7)].item() for d in range(7)]


def test_unpatchify_inverts_pixel_unshuffle():
    z = torch.randn(2, 8, 6, 4)
    torch.testing.assert_close(unpatchify(F.pixel_unshuffle(z, 2), 2), z)


def test_fold_branch_builds_and_runs():
    from dataclasses import replace

    base = PRESETS["tiny"]
    cfg = replace(base, adapter=replace(base.adapter, sr_scale=1, latent_factor=8))  # ratio 1/2 -> fold
    model = randomize(build_model(cfg), 0).eval()
    assert model.lq_proj.latent_proj[0].in_channels == 16 * 4
    with torch.no_grad():
        v = model(torch.randn(1, 3, 64, 64), torch.tensor(0.5), torch.randn(1, 3, 32), torch.randn(1, 16, 8, 8),
                  torch.tensor(0.0))
    assert v.shape == (1, 3, 64, 64)


def test_timestep_features_cos_first_max_period_10():
    f = timestep_features(torch.tensor([500.0]), 8)
    k = torch.arange(4, dtype=torch.float32)
    args = 500 * torch.exp(-math.log(10) * k / 4)
    torch.testing.assert_close(f[0], torch.cat([args.cos(), args.sin()]))


def test_pixel_sincos_x_first_then_y_sin_then_cos():
    t = pixel_sincos(4, 6, 8)
    # pixel (row 3, col 5): dims 0-1 sin(5*w), 2-3 cos(5*w), 4-5 sin(3*w), 6-7 cos(3*w); w = [1, 1/100]
    w = torch.tensor([1.0, 0.01], dtype=torch.float64)
    torch.testing.assert_close(t[3, 5], torch.cat([(5 * w).sin(), (5 * w).cos(), (3 * w).sin(), (3 * w).cos()]))


def test_pit_flatten_order_is_pixel_major_channel_fastest():
    cfg = PRESETS["tiny-pixeldit-1.3b"]
    model = build_model(cfg)
    x = torch.zeros(1, 3, 16, 16)
    x[0, :, 2, 5] = torch.tensor([1.0, 2.0, 3.0])
    with torch.no_grad():
        model.pixel_embedder.proj.weight.zero_()
        model.pixel_embedder.proj.weight[0, 0] = 1.0
        model.pixel_embedder.proj.bias.zero_()
        geo = model.geometry(16, 16, 1, "cpu")
        geo.pixel_pos_x.zero_()
        geo.pixel_pos_y.zero_()
        pixels = model.embed_pixels(x, geo)  # [1, 256, Cp]
    flat = pixels.reshape(1, -1)  # what compress_to_attn sees
    c = cfg.backbone.pixel_hidden_size
    assert flat[0, (2 * 16 + 5) * c + 0] == 1.0 and flat.abs().sum() == 1.0


def test_pid_is_the_backbone_plus_adapter():
    model = build_model(PRESETS["tiny-pid-2k"])
    assert isinstance(model, PiD)
    backbone_keys = set(build_model(PRESETS["tiny-pixeldit-1.3b"]).state_dict())
    assert backbone_keys <= set(model.state_dict())


def test_ntk_model_equals_plain_model_at_the_reference_size():
    from dataclasses import replace

    base = PRESETS["tiny-pid-2k"]
    plain = replace(base, backbone=replace(base.backbone, rope_mode="plain"))
    ntk = replace(base, backbone=replace(base.backbone, rope_mode="ntk", rope_ref=128))  # 128 px = an 8x8 grid
    a, b = randomize(build_model(plain), 5).eval(), randomize(build_model(ntk), 5).eval()
    x, text, z = torch.randn(1, 3, 128, 128), torch.randn(1, 4, 32), torch.randn(1, 16, 4, 4)
    args = (torch.tensor(0.5), text, z, torch.tensor(0.1))
    with torch.no_grad():
        torch.testing.assert_close(b(x, *args), a(x, *args), rtol=0, atol=0)
        wide, zw = torch.randn(1, 3, 128, 256), torch.randn(1, 16, 4, 8)  # 8x16 grid: columns off the reference
        differ = (b(wide, args[0], text, zw, args[3]) - a(wide, args[0], text, zw, args[3])).abs().max()
    assert differ > 1e-4


def test_patchify_and_unpatchify_equal_unfold_and_fold():
    from pid_sdk.model.pixeldit import patchify

    model = build_model(PRESETS["tiny-pixeldit-1.3b"])
    x = torch.randn(2, 3, 32, 48)
    torch.testing.assert_close(patchify(x, 16), F.unfold(x, 16, stride=16).transpose(1, 2), rtol=0, atol=0)
    tokens = torch.randn(2 * 6, 256, 3)
    geo = model.geometry(32, 48, 1, "cpu")
    folded = F.fold(tokens.view(2, 6, 256, 3).permute(0, 3, 2, 1).reshape(2, 768, 6), (32, 48), 16, stride=16)
    torch.testing.assert_close(model.unpatchify_pixels(tokens, 2, geo), folded, rtol=0, atol=0)
