"""The analytic FLOP counter against hand counts and against PyTorch's own counter."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pid_sdk.config import OFFICIAL_PRESETS, PRESETS
from pid_sdk.flops import attention, conv3x3, decode_flops, linear
from pid_sdk.model import build_model, randomize
from tests.test_model import latent_for


def test_primitives_by_hand():
    assert linear(3, 4, 5) == 2 * 3 * 4 * 5
    # Q K^T: 2*L*S*D, weights x V: 2*L*S*D
    assert attention(1, 2, 3, 4) == 2 * 2 * 3 * 4 + 2 * 2 * 3 * 4
    assert conv3x3(2, 10, 3, 5) == 2 * 2 * 10 * 9 * 3 * 5


def test_tiny_preset_by_hand():
    """tiny (pid-2k family at test size) at 64x64, text length 4, batch 1: every term written out."""
    cfg = PRESETS["tiny"]
    b = cfg.backbone
    assert (b.hidden_size, b.patch_depth, b.pixel_depth, b.pixel_hidden_size, b.pixel_attn_hidden_size) == (
        64, 3, 1, 8, 32)
    assert (b.swiglu_hidden_size, b.pixel_mlp_hidden_size, b.txt_embed_dim) == (128, 32, 32)
    assert (cfg.adapter.hidden_dim, cfg.adapter.num_res_blocks, cfg.num_gates) == (32, 2, 2)
    L, T, P = 16, 4, 64 * 64  # 4x4 patches of 16 px, 4 text tokens, 4096 pixels
    count = decode_flops(cfg, 64, 64, steps=4, text_len=4)
    s = count.step
    assert s["patch embedder"] == 2 * L * 768 * 64
    assert s["timestep embedder"] == 2 * (256 * 64 + 64 * 64)
    assert s["MM-DiT adaLN"] == 3 * 2 * 2 * 64 * 384
    assert s["MM-DiT qkv"] == 3 * 2 * (L + T) * 64 * 192
    assert s["MM-DiT attention"] == 3 * 4 * (L + T) ** 2 * 64
    # image stream in 3 blocks, text stream in the first 2 (the last block's text output is unused)
    assert s["MM-DiT proj + SwiGLU"] == (3 * L + 2 * T) * 2 * (64 * 64 + 3 * 64 * 128)
    assert s["gates"] == 2 * 2 * L * 64 * 64
    assert s["pixel embedder"] == 2 * P * 3 * 8
    assert s["PiT adaLN"] == 2 * L * 64 * 6 * 256 * 8
    assert s["PiT compress / expand"] == 2 * 2 * L * 2048 * 32
    assert s["PiT attention"] == 2 * L * 32 * 96 + 4 * L * L * 32 + 2 * L * 32 * 32
    assert s["PiT MLP"] == 2 * 2 * P * 8 * 32
    assert s["final layer"] == 2 * P * 8 * 3
    # FLUX.1 latent 2x2 -> nearest x2 to the 4x4 grid; conv in 16->32, conv 32->32, 2 res blocks of 2 convs
    assert count.once["adapter convolutions"] == 2 * L * 9 * (16 * 32 + 32 * 32 + 4 * 32 * 32)
    assert count.once["adapter heads"] == 2 * 2 * L * 32 * 64
    assert count.once["gate offsets"] == 2 * 2 * L * 64 * 64
    assert count.once["text embedder"] == 2 * T * 32 * 64
    assert count.per_decode == 4 * sum(s.values()) + sum(count.once.values())


def measured(cfg, height, width, batch, text_len):
    """PyTorch's FlopCounterMode over the prepared work and one step; math attention so SDPA is counted."""
    model = randomize(build_model(cfg), 0).eval()
    x = torch.randn(batch, 3, height, width)
    text = torch.randn(batch, text_len, cfg.backbone.txt_embed_dim)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        geo = model.geometry(height, width, min(text_len, cfg.backbone.txt_max_length), "cpu")
        with FlopCounterMode(display=False) as once:
            tokens = model.embed_text(text)
            feats = model.encode_latent(latent_for(cfg, (height, width), batch), torch.zeros(batch), geo)
        with FlopCounterMode(display=False) as step:
            model.denoise(x, torch.full((batch,), 0.5), tokens, geo, feats)
    return once.get_total_flops(), step.get_total_flops()


@pytest.mark.parametrize("name", [f"tiny-{n}" for n in OFFICIAL_PRESETS if PRESETS[n].adapter is not None]
                         + ["demo-flux1"])
def test_matches_pytorch_flop_counter(name):
    cfg = PRESETS[name]
    height, width = (128, 256) if cfg.adapter.sr_scale == 4 else (256, 256)
    once, step = measured(cfg, height, width, batch=2, text_len=5)
    count = decode_flops(cfg, height, width, batch=2, text_len=5)
    assert count.per_step == step
    assert sum(count.once.values()) == once


def test_text_longer_than_the_model_reads_is_cut():
    cfg = PRESETS["tiny"]
    assert decode_flops(cfg, 64, 64, text_len=10**6).per_decode == decode_flops(cfg, 64, 64).per_decode


def test_full_model_matches_the_design_budget():
    """DESIGN.md: about 44 TFLOP a step and about 177 TFLOP a 2048x2048 decode for the 1.3B model."""
    count = decode_flops(PRESETS["pid-2k"], 2048, 2048)
    assert 43e12 < count.per_step < 45e12
    assert 175e12 < count.per_decode < 178e12
    assert 23e12 < count.step["MM-DiT attention"] < 25e12


def test_a_time_floor_is_said_only_when_long():
    from pid_sdk.flops import time_floor

    assert time_floor(1e12, 1e10) == ""  # 100 s
    assert time_floor(6e13, 1e11) == "at least 10 min here (60 TFLOP at the 100 GFLOP/s this machine multiplies " \
                                      "matrices at)"
    assert time_floor(1e12, 1e10, long=60) != ""


def test_a_windowed_decode_counts_each_window_as_a_decode_of_its_size():
    cfg = PRESETS["tiny"]
    one = decode_flops(cfg, 64, 64)
    eight = decode_flops(cfg, 96, 160, window=(64, 64), overlap=32)  # 2 rows x 4 columns of 64x64 windows
    once = sum(one.once.values())  # each window's conditioning, made at every step
    assert eight.per_decode == 8 * (one.per_decode + 3 * once) and eight.once == {}
    assert eight.step == {**{k: 8 * v for k, v in one.step.items()}, **{k: 8 * v for k, v in one.once.items()}}
    assert decode_flops(cfg, 64, 64, window=(128, 128)).per_decode == one.per_decode  # a window cut to the image
    big = PRESETS["pid-2k"]
    whole, windows = decode_flops(big, 4096, 4096), decode_flops(big, 4096, 4096, window=(2048, 2048), overlap=512)
    assert windows.per_decode < whole.per_decode  # 9 windows of 2048: less attention than one 4096 image
