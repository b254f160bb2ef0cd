"""FP8 (E4M3, per-tensor) for the MM-DiT blocks' linear layers (`pid_sdk.fp8.fp8_layers`): nvidia-modelopt
calibrates, the scales are saved as their own versioned file, and the export writes standard QuantizeLinear /
DequantizeLinear pairs around each quantized Linear (input and weight). Everything else stays unquantized.
"""

from __future__ import annotations

import copy
import datetime
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pid_sdk.errors import CheckpointError, ConfigError
from pid_sdk.fp8 import E4M3, E4M3_MAX, fp8_layers

SCALES_FORMAT = "pid-sdk-fp8-scales"
SCALES_VERSION = 1
# --- the Q/DQ op: FP8 rounding in PyTorch, QuantizeLinear + DequantizeLinear in ONNX -----------------------------
@torch.library.custom_op("pid_sdk::fp8_qdq", mutates_args=())
def fp8_qdq(x: Tensor, scale: Tensor) -> Tensor:
    return (x / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3).to(x.dtype) * scale


@fp8_qdq.register_fake
def _fp8_qdq_fake(x: Tensor, scale: Tensor) -> Tensor:
    return torch.empty_like(x)


def onnx_translation() -> dict:
    """The exporter's translation of the op into standard opset-19+ FP8 Q/DQ."""
    import onnx
    from onnxscript import opset23 as op

    def fp8_qdq_onnx(x, scale):
        zero = op.Constant(value=onnx.helper.make_tensor("zero", onnx.TensorProto.FLOAT8E4M3FN, [], [0]))
        return op.DequantizeLinear(op.QuantizeLinear(x, scale, zero), scale, zero)

    return {torch.ops.pid_sdk.fp8_qdq.default: fp8_qdq_onnx}


class QDQLinear(nn.Module):
    """A Linear whose input and weight are rounded to FP8 through Q/DQ: what TensorRT fuses into an FP8 GEMM."""

    def __init__(self, linear: nn.Linear, input_scale: float, weight_scale: float):
        super().__init__()
        self.linear = linear
        dtype = linear.weight.dtype
        self.register_buffer("input_scale", torch.tensor(input_scale, dtype=dtype))
        self.register_buffer("weight_scale", torch.tensor(weight_scale, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        w = fp8_qdq(self.linear.weight, self.weight_scale)
        return F.linear(fp8_qdq(x, self.input_scale.to(x.dtype)), w, self.linear.bias)


def apply_fp8(model: nn.Module, scales: dict[str, dict[str, float]]) -> nn.Module:
    """Swap every calibrated Linear for its FP8 Q/DQ form (in place)."""
    for name in fp8_layers(model):
        parent, attr = _parent(model, name)
        s = scales[name]
        setattr(parent, attr, QDQLinear(getattr(parent, attr), s["input_amax"] / E4M3_MAX, s["weight_amax"] / E4M3_MAX))
    return model


# --- FP8 attention inputs: Q/DQ of q, k and v before the Attention op --------------------------------------------
class FP8AttentionInputs(nn.Module):
    """Rounds q, k and v to FP8 E4M3 with per-tensor scales: in ONNX, a Q/DQ pair on each input of the attention,
    what a fused FP8 attention kernel reads."""

    def __init__(self, q_scale: float, k_scale: float, v_scale: float):
        super().__init__()
        self.register_buffer("scales", torch.tensor([q_scale, k_scale, v_scale]), persistent=False)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        s = self.scales.to(q.dtype)
        return fp8_qdq(q, s[0]), fp8_qdq(k, s[1]), fp8_qdq(v, s[2])


class FP8MultiHeadAttention(nn.Module):
    """Attention written out as the pattern TensorRT fuses into one FP8 multi-head-attention kernel on Hopper and
    Blackwell: the 1/sqrt(d) scale on the query side, Q/DQ feeding the first MatMul directly (K transposed before its
    Q/DQ), Softmax, Q/DQ on the probabilities with the fixed scale 1/448 (they lie in [0, 1]), Q/DQ on V, the second
    MatMul. The model's `sdpa` in exported graphs (--attention-dtype fp8-mha); the `Attention` op cannot carry a
    quantised softmax output."""

    def __init__(self, q_scale: float, k_scale: float, v_scale: float):
        super().__init__()
        self.register_buffer("scales", torch.tensor([q_scale, k_scale, v_scale, 1 / E4M3_MAX]), persistent=False)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        s, root = self.scales.to(q.dtype), q.shape[-1] ** -0.5
        q = fp8_qdq(q * root, s[0] * root)  # [B, h, n, Dh]
        k_t = fp8_qdq(k.transpose(-2, -1), s[1])  # [B, h, Dh, m]
        probs = torch.softmax(q @ k_t, dim=-1)  # [B, h, n, m]
        return fp8_qdq(probs, s[3]) @ fp8_qdq(v, s[2])  # [B, h, n, Dh]


class AmaxObserver(nn.Module):
    """Records the largest |q|, |k|, |v| an attention sees (calibration); returns them unchanged."""

    def __init__(self):
        super().__init__()
        self.amax = [0.0, 0.0, 0.0]

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        self.amax = [max(a, t.detach().abs().max().item()) for a, t in zip(self.amax, (q, k, v))]
        return q, k, v


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    from pid_sdk.model.pixeldit import MMDiTJointAttention, RotaryAttention

    return {n: m for n, m in model.named_modules() if isinstance(m, (MMDiTJointAttention, RotaryAttention))}


def calibrate_attention(model: nn.Module, forward_loop) -> dict[str, dict[str, float]]:
    """amax of q, k and v of every attention over `forward_loop(model)` (the 4 student steps)."""
    work = copy.deepcopy(model).float().eval()
    observers = {name: AmaxObserver() for name in attention_modules(work)}
    for name, module in attention_modules(work).items():
        module.quantize_inputs = observers[name]
    with torch.no_grad():
        forward_loop(work)
    return {name: dict(zip(("q_amax", "k_amax", "v_amax"), o.amax)) for name, o in observers.items()}


def apply_fp8_attention(model: nn.Module, scales: dict[str, dict[str, float]], mha: bool = False) -> nn.Module:
    """FP8 Q/DQ on the inputs of every attention (in place); `mha`: also on the softmax output, the attention written
    out as TensorRT's FP8 MHA pattern (FP8MultiHeadAttention)."""
    for name, module in attention_modules(model).items():
        s = [max(scales[name][k], 1e-12) / E4M3_MAX for k in ("q_amax", "k_amax", "v_amax")]
        if mha:
            module.sdpa = FP8MultiHeadAttention(*s)
        else:
            module.quantize_inputs = FP8AttentionInputs(*s)
    return model


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, attr = name.rsplit(".", 1)
    return model.get_submodule(path), attr


# --- calibration with nvidia-modelopt -------------------------------------------------------------------------
def modelopt_config(layers: list[str]) -> dict:
    """FP8 per-tensor on `layers` only, max calibration."""
    e4m3 = {"num_bits": (4, 3), "axis": None}
    enabled = [{"quantizer_name": f"{n}.{q}", "cfg": e4m3} for n in layers for q in ("input_quantizer",
                                                                                       "weight_quantizer")]
    return {"quant_cfg": [{"quantizer_name": "*", "enable": False}, *enabled], "algorithm": "max"}


def calibrate(model: nn.Module, forward_loop) -> dict[str, dict[str, float]]:
    """amax of every quantized layer's input and weight, from modelopt over `forward_loop(model)`."""
    try:
        import modelopt.torch.quantization as mtq
    except ImportError:
        raise ConfigError("FP8 calibration needs nvidia-modelopt.",
                          fix="pip install nvidia-modelopt requests huggingface_hub (or 'pid-sdk[tensorrt]')") from None
    work = copy.deepcopy(model).float().eval()
    layers = fp8_layers(model)
    mtq.quantize(work, modelopt_config(layers), forward_loop)
    scales = {}
    for name in layers:
        layer = work.get_submodule(name)
        amax_in, amax_w = layer.input_quantizer.amax, layer.weight_quantizer.amax
        if amax_in is None or amax_w is None:
            raise CheckpointError(f"Calibration did not reach {name}.", fix="check the calibration forward loop")
        scales[name] = {"input_amax": float(amax_in.max()), "weight_amax": float(amax_w.max())}
    return scales


def student_forward_loop(latents: list[Tensor], height: int, width: int, text_len: int, text_dim: int, seed: int = 0):
    """Runs the 4-step student on every calibration latent at the bucket's real size, so every step is seen."""
    from pid_sdk.runtime.torch_backend import TorchRuntime
    from pid_sdk.sampling import sample_student

    def loop(model: nn.Module) -> None:
        runtime = TorchRuntime(model, torch.device("cpu"), "fp32")
        for i, z in enumerate(latents):
            text = torch.zeros(z.shape[0], text_len, text_dim)
            step = runtime.backend(text=text, latent=z, latent_sigma=torch.zeros(z.shape[0]), height=height,
                                   width=width)
            velocity = step.infer  # one prepared decode per calibration latent
            sample_student(lambda x, s, f=velocity: f({"x": x, "sigma": s})["v"], (z.shape[0], 3, height, width),
                           generator=torch.Generator().manual_seed(seed + i))

    return loop


def save_scales(path: Path, scales: dict, *, model_sha256: str, bucket: tuple[int, int], samples: int) -> None:
    data = {"format": SCALES_FORMAT, "format_version": SCALES_VERSION, "model_sha256": model_sha256,
            "calibration": {"bucket": list(bucket), "samples": samples, "steps": 4, "algorithm": "max",
                            "date": datetime.date.today().isoformat()},
            "scales": scales}
    path.write_text(json.dumps(data, indent=2) + "\n")


def load_scales(path: Path, model_sha256: str) -> dict:
    data = json.loads(path.read_text())
    if data.get("format") != SCALES_FORMAT or data.get("format_version") != SCALES_VERSION:
        raise CheckpointError(f"{path} is not a pid-sdk FP8 scales file of a supported version.",
                              received=data.get("format"), fix="recalibrate (pid-sdk export --precision fp8)")
    if data["model_sha256"] != model_sha256:
        raise CheckpointError(f"{path} was calibrated for other weights.", received=data["model_sha256"][:12],
                              expected=model_sha256[:12], fix="delete it to recalibrate for these weights")
    return data["scales"]
