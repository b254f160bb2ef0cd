"""FP8 (E4M3) matmuls for the PyTorch backend, through `torch._scaled_mm`, on the layers `pid_sdk.fp8` names.

Weights are quantised once with one scale per output channel; activations are quantised on the fly with one scale
per row (token), so an outlier token does not flatten the others. Products accumulate in fp32 and come out bf16.
CUDA needs compute capability 8.9+ (Ada, Hopper, Blackwell); the CPU kernel is there for parity tests.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pid_sdk.fp8 import E4M3, E4M3_MAX, fp8_layers


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """[M, K] -> (fp8 [M, K], fp32 scale [M, 1]) with x ~= fp8 * scale."""
    scale = x.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / E4M3_MAX
    return (x.float() / scale).to(E4M3), scale


class Fp8MatmulLinear(nn.Module):
    """A frozen nn.Linear whose matmul runs in FP8; the bias is added in bf16."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = quantize_rows(linear.weight.detach())
        self.register_buffer("weight", weight)  # [N, K]
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, N]
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))

    def forward(self, x: Tensor) -> Tensor:
        return self._matmul(x, self.weight, self.weight_scale, self.bias)

    def rows(self, x: Tensor, rows: Tensor) -> Tensor:
        """The outputs `rows` only (see pixeldit.linear_rows)."""
        bias = None if self.bias is None else self.bias[rows]
        return self._matmul(x, self.weight[rows], self.weight_scale[:, rows].contiguous(), bias)

    @staticmethod
    def _matmul(x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Tensor | None) -> Tensor:
        lead = x.shape[:-1]
        xq, x_scale = quantize_rows(x.reshape(-1, x.shape[-1]))  # [M, K]
        out = torch._scaled_mm(xq, weight.t(), scale_a=x_scale, scale_b=weight_scale, out_dtype=torch.bfloat16)
        if bias is not None:
            out = out + bias
        return out.view(*lead, weight.shape[0])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3, row-wise scales"


def quantize_linears(model: nn.Module) -> int:
    """Replace the FP8 layers of `model` (`pid_sdk.fp8.fp8_layers`) by Fp8MatmulLinear in place; returns how many."""
    names = fp8_layers(model)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, Fp8MatmulLinear(model.get_submodule(name)))
    return len(names)


def fp8_supported(device: torch.device) -> tuple[bool, str]:
    """Whether FP8 matmuls run here, and why not."""
    if device.type == "cpu":
        return True, "CPU kernel (slow; for parity checks)"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return False, f"compute capability {major}.{minor} has no FP8 tensor cores (needs 8.9+: Ada, Hopper, Blackwell)"
    return True, f"sm_{major}{minor}"


def torchao_supported(device: torch.device) -> tuple[bool, str]:
    """Whether torchao's float8 linears run here (they need CUDA 8.9+ and the torchao package), and why not."""
    import importlib.util

    if importlib.util.find_spec("torchao") is None:
        return False, "the torchao package is not installed (pip install torchao)"
    if device.type != "cuda":
        return False, "torchao's float8 kernels need a CUDA GPU of compute capability 8.9+"
    return fp8_supported(device)


def quantize_linears_torchao(model: nn.Module) -> int:
    """torchao's dynamic float8 quantisation (activations and weights, per-row scales) of the same layers as
    `quantize_linears`, in place; returns how many."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    names = set(fp8_layers(model))
    quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
              filter_fn=lambda module, name: name in names)
    return len(names)
