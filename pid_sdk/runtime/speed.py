"""How the PyTorch backend runs: weight precision, attention kernel, torch.compile and CUDA graphs.

`Speed()` is the reference (the official precision policy: fp32 parameters, bf16 autocast on CUDA). The named
settings are what the benchmarks measure:

    Decoder.load(path, speed="fast")   # bf16 weights, torch.compile, CUDA graphs
    Decoder.load(path, speed="fp8")    # the same with FP8 linear layers (compute capability 8.9+)
    Decoder.load(path, speed="fp8-torchao")  # FP8 linears by torchao (dynamic, per-row scales; CUDA 8.9+)
    Decoder.load(path, speed="fp8-attention")  # fast, with the MM-DiT attention in FP8 (cuDNN; Hopper+)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from pid_sdk.errors import ConfigError
from pid_sdk.runtime.attention import check_attention, lse_kernel

WEIGHTS = ("fp32", "bf16", "fp8", "fp8-torchao")


@dataclass(frozen=True)
class Speed:
    weights: str = "fp32"  # fp32 (bf16 autocast on CUDA), bf16, fp8 linears in a bf16 model (ours, or torchao's)
    attention: str = "auto"  # auto, flash, cudnn, efficient, math
    compile: bool = False  # torch.compile the step network (one compile per image size)
    autotune: bool = False  # with compile: max-autotune GEMMs and the flux-fast Inductor flags (INDUCTOR_FLAGS)
    cuda_graphs: bool = False  # capture the step network once per size and text length, replay it each step
    split_modulation: bool = True  # PiT adaLN chunk by chunk: less peak memory, same result
    split_attention: bool = False  # MM-DiT attention as text and image parts merged by log-sum-exp (aligned calls)
    fp8_attention: bool = False  # MM-DiT attention in FP8 through cuDNN's FP8 SDPA (Hopper+, nvidia-cudnn-frontend)

    def check(self, device: torch.device) -> "Speed":
        if self.weights not in WEIGHTS:
            raise ConfigError("Unknown weight precision.", received=self.weights, expected=", ".join(WEIGHTS),
                              fix=f"Speed(weights={WEIGHTS[0]!r})")
        check_attention(self.attention)
        if self.autotune and not self.compile:
            raise ConfigError("autotune tunes what torch.compile generates.", received="autotune=True, compile=False",
                              fix="Speed(compile=True, autotune=True), or speed='fast-autotune'")
        if self.cuda_graphs and device.type != "cuda":
            raise ConfigError("CUDA graphs need a CUDA device.", received=str(device),
                              fix="drop cuda_graphs, or decode on device='cuda'")
        if self.fp8_attention:
            self._check_fp8_attention(device)
        if self.weights == "fp8":
            from pid_sdk.runtime.fp8_linear import fp8_supported

            ok, why = fp8_supported(device)
            if not ok:
                raise ConfigError("FP8 linear layers cannot run on this GPU.", received=why,
                                  fix="use speed='fast' (bf16 weights) on this GPU")
        if self.weights == "fp8-torchao":
            from pid_sdk.runtime.fp8_linear import torchao_supported

            ok, why = torchao_supported(device)
            if not ok:
                raise ConfigError("torchao's FP8 linear layers cannot run here.", received=why,
                                  fix="use speed='fp8' (our FP8 layers) or 'fast' (bf16)")
        return self

    def _check_fp8_attention(self, device: torch.device) -> None:
        from pid_sdk.runtime.fp8_attention import fp8_attention_supported

        if self.weights == "fp32":
            raise ConfigError("FP8 attention runs in a bf16 model.", received="weights='fp32', fp8_attention=True",
                              fix="Speed(weights='bf16', fp8_attention=True), or speed='fp8-attention'")
        if self.split_attention:
            raise ConfigError("FP8 attention and split attention are two ways to run the same call.",
                              received="fp8_attention=True, split_attention=True", fix="choose one of them")
        ok, why = fp8_attention_supported(device)
        if not ok:
            raise ConfigError("FP8 attention cannot run here.", received=why,
                              fix="use speed='fast' (bf16 attention) here")


FAST = Speed(weights="bf16", compile=True, cuda_graphs=True)
SPEEDS = {
    "reference": Speed(),
    "bf16": Speed(weights="bf16"),
    "fast": FAST,
    "fp8": replace(FAST, weights="fp8"),
    "fp8-torchao": replace(FAST, weights="fp8-torchao"),
    "fast-autotune": replace(FAST, autotune=True),
    "fp8-attention": replace(FAST, attention="cudnn", fp8_attention=True),
}
# The Inductor settings of the PyTorch team's "flux-fast" recipe, with max-autotune GEMM selection. Inductor's own
# CUDA graphs stay off: the runtime captures the whole step itself (cuda_graphs).
INDUCTOR_FLAGS = {"max_autotune": True, "triton.cudagraphs": False, "coordinate_descent_tuning": True,
                  "coordinate_descent_check_all_directions": True, "epilogue_fusion": False, "conv_1x1_as_mm": True}


def get_speed(speed: "Speed | str | None", device: torch.device) -> Speed:
    if speed is None:
        return Speed().check(device)
    if isinstance(speed, Speed):
        return speed.check(device)
    if not isinstance(speed, str) or speed not in SPEEDS:
        raise ConfigError("Unknown speed setting.", received=repr(speed)[:80], expected=", ".join(SPEEDS),
                          fix="pass one of these names, or a pid_sdk.Speed(...)")
    chosen = SPEEDS[speed]
    if device.type != "cuda":  # CUDA graphs are a CUDA feature; everything else of the setting still applies
        chosen = replace(chosen, cuda_graphs=False)
    return chosen.check(device)


def prepare_model(model: nn.Module, speed: Speed, device: torch.device) -> nn.Module:
    """Cast (before the move, so 1.3B fp32 parameters never sit on the GPU) and quantise the model for `speed`."""
    dtype = torch.float32 if speed.weights == "fp32" else torch.bfloat16
    model = model.to(dtype).to(device).eval()
    model.set_split_modulation(speed.split_modulation)
    model.set_split_attention(lse_kernel(speed.attention, device) if speed.split_attention else None)
    if speed.fp8_attention:
        from pid_sdk.runtime.fp8_attention import fp8_sdpa

        model.set_joint_sdpa(fp8_sdpa)
    if speed.weights == "fp8":
        from pid_sdk.runtime.fp8_linear import quantize_linears

        quantize_linears(model)
    if speed.weights == "fp8-torchao":
        from pid_sdk.runtime.fp8_linear import quantize_linears_torchao

        quantize_linears_torchao(model)
    return model
