"""training/grow.py: a deeper PiD that computes what the trained one did, and whose new blocks then learn."""

import pytest
import torch
from test_training import batch, tiny_model

from pid_sdk.errors import ConfigError
from training.grow import grow, grown_config

DEEPER = {"patch_depth": 5, "pixel_depth": 2, "num_res_blocks": 3, "pit_inject": 1}


def velocity(model, b, sigma=0.6):
    x = torch.randn(b["image"].shape, generator=torch.Generator().manual_seed(5))
    text = torch.zeros(x.shape[0], 8, model.config.backbone.txt_embed_dim)
    return model(x, torch.full((x.shape[0],), sigma), text, b["latent"], torch.tensor([0.2]))


def test_grown_model_returns_the_same_velocity():
    small = tiny_model()
    big = grow(small, DEEPER)
    cfg = big.config
    assert (cfg.backbone.patch_depth, cfg.backbone.pixel_depth, cfg.adapter.num_res_blocks) == (5, 2, 3)
    assert cfg.adapter.pit_inject is True and not small.config.adapter.pit_inject
    assert sum(p.numel() for p in big.parameters()) > sum(p.numel() for p in small.parameters())
    b = batch()
    torch.testing.assert_close(velocity(big, b), velocity(small, b), atol=1e-5, rtol=1e-5)


def test_new_blocks_get_gradients():
    big = grow(tiny_model(), DEEPER)
    velocity(big, batch()).square().mean().backward()
    new = {"patch_blocks.4.adaLN_modulation_img.0.weight", "pixel_blocks.1.adaLN_modulation.0.weight",
           "lq_proj.latent_proj.5.block.5.weight", "lq_proj.output_heads.2.weight", "lq_proj.pit_head.weight"}
    grads = {name: p.grad for name, p in big.named_parameters() if name in new}
    assert grads.keys() == new
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_grow_refuses_to_shrink_or_widen():
    cfg = tiny_model().config
    with pytest.raises(ConfigError, match="only grow"):
        grown_config(cfg, {"patch_depth": 1})
    with pytest.raises(ConfigError, match="Only the depths"):
        grown_config(cfg, {"hidden_size": 64})
    with pytest.raises(ConfigError, match="switch"):
        grown_config(cfg, {"pit_inject": 2})
