"""Grow a trained PiD deeper without changing what it computes, so training goes on from its weights.

New patch (MMDiT) and pixel (PiT) blocks get a zero adaLN projection (adaLN-Zero: every gate is 0, so the block passes
its input through), new adapter residual blocks a zero last convolution, and new latent gates a zero output head (the
adapter's own initialisation). `pit_inject=1` switches on v1.5's injection of the latent into the pixel path, whose
head starts at zero too. Every tensor of the smaller model is copied by name. Only depths grow: a wider layer would
change the function.
"""

from __future__ import annotations

import re
from dataclasses import replace

from torch import nn

from pid_sdk.config import PiDConfig
from pid_sdk.errors import ConfigError
from pid_sdk.model import build_model
from pid_sdk.model.adapter import ResBlock

DEPTHS = {"patch_depth": "backbone", "pixel_depth": "backbone", "num_res_blocks": "adapter", "pit_inject": "adapter"}


def grown_config(cfg: PiDConfig, depths: dict[str, int]) -> PiDConfig:
    """`cfg` with the depths in `depths` (names of DEPTHS) raised; its description counts the new parameters."""
    unknown = sorted(set(depths) - set(DEPTHS))
    if unknown or cfg.adapter is None:
        raise ConfigError("Only the depths of a PiD network can grow.", received=unknown or cfg.name,
                          expected=", ".join(DEPTHS), fix="e.g. patch_depth=6 num_res_blocks=4")
    parts = {"backbone": cfg.backbone, "adapter": cfg.adapter}
    for name, depth in depths.items():
        old = getattr(parts[DEPTHS[name]], name)
        if depth < old:
            raise ConfigError(f"{name} can only grow.", received=depth, expected=f"at least {old}")
        if name == "pit_inject" and depth not in (0, 1):
            raise ConfigError("pit_inject is a switch.", received=depth, expected="0 or 1", fix="pit_inject=1")
        parts[DEPTHS[name]] = replace(parts[DEPTHS[name]], **{name: bool(depth) if name == "pit_inject" else depth})
    grown = replace(cfg, backbone=parts["backbone"], adapter=parts["adapter"])
    count = sum(p.numel() for p in build_model(grown).parameters())
    return replace(grown, description=re.sub(r"[\d.]+M parameters", f"{count / 1e6:.1f}M parameters", cfg.description))


def grow(model: nn.Module, depths: dict[str, int]) -> nn.Module:
    """A deeper copy of the PiD `model` (depths as in `grown_config`) that returns the same velocity."""
    small, big_cfg = model.config, grown_config(model.config, depths)
    big = build_model(big_cfg)
    big.init_weights()
    for block in list(big.patch_blocks)[small.backbone.patch_depth:]:
        _zero(block.adaLN_modulation_img, block.adaLN_modulation_txt)
    for block in list(big.pixel_blocks)[small.backbone.pixel_depth:]:
        _zero(block.adaLN_modulation)
    res_blocks = [m for m in big.lq_proj.latent_proj if isinstance(m, ResBlock)]
    for res in res_blocks[small.adapter.num_res_blocks:]:
        _zero(res.block[-1])
    state = big.state_dict()
    state.update(model.state_dict())
    big.load_state_dict(state)
    return big.to(next(model.parameters()).device)


def _zero(*modules: nn.Module) -> None:
    for module in modules:
        for p in module.parameters():
            p.data.zero_()
