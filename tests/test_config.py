"""Golden test: every official preset has exactly the key names and shapes of spec section 3."""

import math
from dataclasses import replace

import pytest
import torch

from pid_sdk.config import OFFICIAL_PRESETS, PRESETS, get_preset
from pid_sdk.errors import ConfigError
from pid_sdk.model import build_model

D = 1536


def spec_backbone_keys(depth: int = 14, pixel_depth: int = 2) -> dict[str, tuple]:
    """Spec 3.1 written out literally."""
    k = {
        "pixel_embedder.proj.weight": (16, 3), "pixel_embedder.proj.bias": (16,),
        "s_embedder.proj.weight": (D, 768), "s_embedder.proj.bias": (D,),
        "t_embedder.mlp.0.weight": (D, 256), "t_embedder.mlp.0.bias": (D,),
        "t_embedder.mlp.2.weight": (D, D), "t_embedder.mlp.2.bias": (D,),
        "y_embedder.proj.weight": (D, 2304), "y_embedder.proj.bias": (D,), "y_embedder.norm.weight": (D,),
        "y_pos_embedding": (1, 300, D),
        "final_layer.norm.weight": (16,), "final_layer.linear.weight": (3, 16), "final_layer.linear.bias": (3,),
    }
    for i in range(depth):
        p = f"patch_blocks.{i}."
        for n in ("norm_x1", "norm_y1", "norm_x2", "norm_y2"):
            k[p + n + ".weight"] = (D,)
        for s in ("x", "y"):
            k[p + f"attn.qkv_{s}.weight"] = (4608, D)
            k[p + f"attn.q_norm_{s}.weight"] = (64,)
            k[p + f"attn.k_norm_{s}.weight"] = (64,)
            k[p + f"attn.proj_{s}.weight"] = (D, D)
            k[p + f"attn.proj_{s}.bias"] = (D,)
            k[p + f"mlp_{s}.w1.weight"] = (4096, D)
            k[p + f"mlp_{s}.w3.weight"] = (4096, D)
            k[p + f"mlp_{s}.w2.weight"] = (D, 4096)
        for s in ("img", "txt"):
            k[p + f"adaLN_modulation_{s}.0.weight"] = (9216, D)
            k[p + f"adaLN_modulation_{s}.0.bias"] = (9216,)
    for j in range(pixel_depth):
        p = f"pixel_blocks.{j}."
        k.update({
            p + "norm1.weight": (16,), p + "norm2.weight": (16,),
            p + "compress_to_attn.weight": (1152, 4096), p + "compress_to_attn.bias": (1152,),
            p + "expand_from_attn.weight": (4096, 1152), p + "expand_from_attn.bias": (4096,),
            p + "attn.qkv.weight": (3456, 1152), p + "attn.q_norm.weight": (72,), p + "attn.k_norm.weight": (72,),
            p + "attn.proj.weight": (1152, 1152), p + "attn.proj.bias": (1152,),
            p + "mlp.fc1.weight": (64, 16), p + "mlp.fc1.bias": (64,),
            p + "mlp.fc2.weight": (16, 64), p + "mlp.fc2.bias": (16,),
            p + "adaLN_modulation.0.weight": (24576, D), p + "adaLN_modulation.0.bias": (24576,),
        })
    return k


def spec_adapter_keys(cin: int, hd: int, gate: int, v15: bool) -> dict[str, tuple]:
    """Spec 3.2 written out literally (cin = conv input channels after any unpatchify)."""
    k = {
        "lq_proj.latent_proj.0.weight": (hd, cin, 3, 3), "lq_proj.latent_proj.0.bias": (hd,),
        "lq_proj.latent_proj.2.weight": (hd, hd, 3, 3), "lq_proj.latent_proj.2.bias": (hd,),
    }
    for r in range(3, 7):
        p = f"lq_proj.latent_proj.{r}.block."
        for n in ("0", "3"):
            k[p + n + ".weight"] = (hd,)
            k[p + n + ".bias"] = (hd,)
        for n in ("2", "5"):
            k[p + n + ".weight"] = (hd, hd, 3, 3)
            k[p + n + ".bias"] = (hd,)
    for i in range(7):
        k[f"lq_proj.output_heads.{i}.weight"] = (D, hd)
        k[f"lq_proj.output_heads.{i}.bias"] = (D,)
        k[f"lq_proj.gate_modules.{i}.content_proj.weight"] = (gate, 2 * D)
        k[f"lq_proj.gate_modules.{i}.content_proj.bias"] = (gate,)
        k[f"lq_proj.gate_modules.{i}.log_alpha"] = ()
    if v15:
        k.update({"lq_proj.pit_head.weight": (D, hd), "lq_proj.pit_head.bias": (D,),
                  "pit_lq_gate.content_proj.weight": (1, 2 * D), "pit_lq_gate.content_proj.bias": (1,),
                  "pit_lq_gate.log_alpha": ()})
    return k


EXPECTED_ADAPTERS = {  # preset -> (conv input channels, hidden, gate width, v1.5)
    "pid-2k": (16, 512, D, False),
    "pid-2k-flux2": (128, 512, D, False),
    "pid-2k-dinov2": (768, 512, D, False),
    "pid-2k-sr8x-siglip": (1152, 512, D, False),
    "pid-2kto4k": (16, 512, D, False),
    "pid-2kto4k-sdxl": (4, 512, D, False),
    "pid-2kto4k-v1.5": (16, 1024, 1, True),
    "pid-2kto4k-v1.5-qwenimage": (16, 1024, 1, True),
    "pid-2kto4k-v1.5-flux2": (32, 1024, 1, True),
}


def meta_shapes(name: str) -> dict[str, tuple]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build_model(PRESETS[name]).state_dict().items()}


@pytest.mark.parametrize("name", OFFICIAL_PRESETS)
def test_official_keys_and_shapes_match_spec(name):
    expected = spec_backbone_keys()
    if name in EXPECTED_ADAPTERS:
        expected.update(spec_adapter_keys(*EXPECTED_ADAPTERS[name]))
    assert meta_shapes(name) == expected


def test_tensor_and_parameter_counts():
    backbone = meta_shapes("pixeldit-1.3b")
    assert len(backbone) == 385
    assert sum(math.prod(s) for s in backbone.values()) == 1_302_470_787
    assert len(meta_shapes("pid-2k")) == 456
    assert len(meta_shapes("pid-2kto4k-v1.5")) == 461  # 467 in training files with the 6-tensor aux RGB head


def test_every_official_family_has_a_tiny_preset():
    for name in OFFICIAL_PRESETS:
        tiny = get_preset(f"tiny-{name}")
        assert tiny.backbone.hidden_size < 128
        assert (tiny.adapter is None) == (PRESETS[name].adapter is None)
        if tiny.adapter:
            assert tiny.adapter.latent_channels == PRESETS[name].adapter.latent_channels
        assert tiny.backbone.rope_mode == PRESETS[name].backbone.rope_mode


def test_rope_modes_per_family():
    assert PRESETS["pixeldit-1.3b"].backbone.rope_mode == "plain"
    assert PRESETS["pid-2k"].backbone.rope_ref == 1024
    assert PRESETS["pid-2kto4k"].backbone.rope_ref == 1024
    assert PRESETS["pid-2kto4k-v1.5"].backbone.rope_ref == 2048
    assert PRESETS["pixeldit-1.3b-2kto4k"].backbone.rope_ref == 2048


def test_any_dimension_is_settable():
    base = PRESETS["tiny-pid-2kto4k-v1.5"]
    cfg = replace(base, backbone=replace(base.backbone, hidden_size=48, num_heads=3, patch_depth=5, pixel_depth=2,
                                         pixel_hidden_size=4, pixel_attn_hidden_size=24, pixel_num_heads=2,
                                         txt_embed_dim=20, txt_max_length=7, mlp_ratio=2.0),
                  adapter=replace(base.adapter, hidden_dim=16, latent_channels=8, num_res_blocks=1, interval=3))
    model = build_model(cfg)
    sd = model.state_dict()
    assert sd["y_pos_embedding"].shape == (1, 7, 48)
    assert sd["lq_proj.latent_proj.0.weight"].shape == (16, 8, 3, 3)
    assert len(model.lq_proj.output_heads) == 2  # ceil(5 / 3)
    assert sd["pixel_blocks.1.adaLN_modulation.0.weight"].shape == (6 * 4 * 256, 48)
    assert sd["patch_blocks.4.mlp_x.w1.weight"].shape == (64, 48)  # int(2 * int(48 * 2.0) / 3)
    assert sd["pixel_blocks.0.mlp.fc1.weight"].shape == (16, 4)


def test_bad_configs_raise_config_error():
    with pytest.raises(ConfigError, match="num_heads"):
        replace(PRESETS["tiny"], backbone=replace(PRESETS["tiny"].backbone, num_heads=5))
    with pytest.raises(ConfigError, match="Unknown preset"):
        get_preset("pid-9k")
