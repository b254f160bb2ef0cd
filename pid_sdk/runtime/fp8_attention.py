"""FP8 attention on Hopper and newer: cuDNN's FP8 SDPA graph through NVIDIA's cuDNN frontend (`nvidia-cudnn-frontend`).

Why this library: of the maintained FP8 attention kernels on the package lists, its Python wheel is small (11.6 MB
for CPython 3.12, no compilation at install), it runs on the cuDNN that PyTorch's CUDA wheels already ship, and its
FP8 forward graph is the kernel family TensorRT fuses on Hopper. FlashInfer's wheel (62 MB) does not fit beside
the tree on the GPU host; Transformer Engine compiles against the local CUDA toolkit.

q, k and v are quantised to E4M3 with one dynamic scale per tensor (amax / 448, computed on the GPU each call, so
nothing syncs the host and a CUDA graph replays it; per-head scales were measured and buy nothing, since E4M3 keeps
its mantissa over 15 binades: bench/attention_parity.py, docs/benchmarks.md); the scores and softmax statistics are
float32 inside the kernel, the unnormalised probabilities (in [0, 1]) enter the second matmul as E4M3 scaled by 448,
and the output is written in bf16 (`reference_fp8_sdpa` is the same arithmetic in PyTorch). The cuDNN graph is
built once per shape and layout and called as one opaque operator (`pid_sdk::fp8_attention`), which torch.compile
leaves alone and CUDA graphs capture.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from pid_sdk.fp8 import E4M3, E4M3_MAX

MIN_CUDNN = 91400  # FP8 SDPA forward with a bf16 output


def fp8_attention_supported(device: torch.device) -> tuple[bool, str]:
    """(True, "") where the FP8 attention can run, else False and the reason."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False, f"FP8 attention needs a CUDA GPU (device: {device})"
    capability = torch.cuda.get_device_capability(device)
    if capability < (9, 0):
        return False, f"FP8 attention needs compute capability 9.0+ (Hopper); this GPU has {capability}"
    try:
        import cudnn
    except ImportError:
        return False, "nvidia-cudnn-frontend is not installed (pip install 'pid-sdk[fp8-attention]')"
    try:
        version = cudnn.backend_version()
    except RuntimeError as err:  # the frontend loads cuDNN itself: PyTorch's CUDA wheels bring it
        return False, f"the cuDNN frontend could not load cuDNN ({err})"
    if version < MIN_CUDNN:
        return False, f"cuDNN {version} is older than {MIN_CUDNN} (FP8 attention with a bf16 output)"
    return True, ""


def quantize(x: Tensor) -> tuple[Tensor, Tensor]:
    """x -> (E4M3 values, the descale [1, 1, 1, 1] float32 that gives x back)."""
    amax = x.abs().amax().float().clamp_min(1e-12)
    return (x.float() * (E4M3_MAX / amax)).to(E4M3), (amax / E4M3_MAX).reshape(1, 1, 1, 1)


def reference_fp8_sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The same arithmetic in plain PyTorch, on any device: E4M3 q, k, v with per-tensor scales, float32 scores, the
    unnormalised probabilities exp(s - row max) in [0, 1] rounded to E4M3 (scaled by 448) for the second matmul, the
    row sum taken before rounding, bf16 out. What the kernel is judged against on a GPU, and what FP8 attention
    costs an image where there is none."""
    (q8, dq), (k8, dk), (v8, dv) = quantize(q), quantize(k), quantize(v)
    scores = (q8.float() @ k8.float().transpose(-2, -1)) * (dq * dk).reshape(()) * q.shape[-1] ** -0.5  # [B, h, n, m]
    return e4m3_softmax_times_v(scores, v8.float() * dv.reshape(()))


def e4m3_softmax_times_v(scores: Tensor, v: Tensor) -> Tensor:
    """The kernel's second half: the unnormalised probabilities exp(s - row max) rounded to E4M3 (scaled by 448)
    times v (float32, already dequantised), divided by the row sum of the unrounded probabilities; bf16 out."""
    p = (scores - scores.amax(-1, keepdim=True)).exp()  # [B, h, n, m]
    p8 = (p * E4M3_MAX).to(E4M3).float() / E4M3_MAX
    return ((p8 @ v) / p.sum(-1, keepdim=True)).to(torch.bfloat16)  # [B, h, n, Dv]


def fp8_sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Drop-in for F.scaled_dot_product_attention (no mask, default scale): q, k, v [B, h, n, Dh] bf16 -> bf16."""
    (q8, dq), (k8, dk), (v8, dv) = quantize(q), quantize(k), quantize(v)
    return fp8_attention(q8, k8, v8, dq, dk, dv)


@torch.library.custom_op("pid_sdk::fp8_attention", mutates_args=())
def fp8_attention(q8: Tensor, k8: Tensor, v8: Tensor, descale_q: Tensor, descale_k: Tensor,
                  descale_v: Tensor) -> Tensor:
    q8, k8, v8 = (t if t.stride(-1) == 1 else t.contiguous() for t in (q8, k8, v8))
    out = _empty_out(q8, v8)
    plan = _plan(_layout(q8), _layout(k8), _layout(v8), _layout(out), q8.device.index)
    plan.run(q8, k8, v8, descale_q, descale_k, descale_v, out)
    return out


@fp8_attention.register_fake
def _(q8, k8, v8, descale_q, descale_k, descale_v):
    return _empty_out(q8, v8)


def _empty_out(q8: Tensor, v8: Tensor) -> Tensor:
    """bf16 [B, h, n, Dv] laid out as [B, n, h, Dv]: the model's next step (heads back to channels) is then a view."""
    b, h, n, _ = q8.shape
    return torch.empty(b, n, h, v8.shape[-1], dtype=torch.bfloat16, device=q8.device).transpose(1, 2)


def _layout(t: Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(t.shape), tuple(t.stride())


@functools.lru_cache(maxsize=64)
def _plan(q, k, v, out, device_index: int) -> "_Plan":
    return _Plan(q, k, v, out, device_index)


class _Plan:
    """One built cuDNN FP8 SDPA graph for fixed shapes and strides, and its workspace."""

    Q, K, V, O, DESCALE_Q, DESCALE_K, DESCALE_V, DESCALE_S, SCALE_S, SCALE_O, AMAX_O = range(11)

    def __init__(self, q, k, v, out, device_index: int):
        import cudnn

        self.cudnn, self.device = cudnn, torch.device("cuda", device_index)
        self.handle = cudnn.create_handle()
        graph = self.describe(cudnn, q, k, v, out)
        graph.validate()
        graph.build_operation_graph()
        graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        graph.check_support()
        graph.build_plans()
        self.graph = graph
        self.workspace = torch.empty(graph.get_workspace_size(), dtype=torch.uint8, device=self.device)
        # the softmax probabilities lie in [0, 1]: E4M3 carries them scaled by its maximum; the output is bf16
        ones = dict(dtype=torch.float32, device=self.device)
        self.scale_s = torch.full((1, 1, 1, 1), E4M3_MAX, **ones)
        self.descale_s = torch.full((1, 1, 1, 1), 1 / E4M3_MAX, **ones)
        self.scale_o = torch.ones((1, 1, 1, 1), **ones)
        self.amax_o = torch.zeros((1, 1, 1, 1), **ones)

    @classmethod
    def describe(cls, cudnn, q, k, v, out):
        """The graph: E4M3 q, k, v ((shape, strides) each) and their descales in, bf16 out (and its amax)."""
        graph = cudnn.pygraph(io_data_type=cudnn.data_type.FP8_E4M3, intermediate_data_type=cudnn.data_type.FLOAT,
                              compute_data_type=cudnn.data_type.FLOAT)
        fp8, fp32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
        tq, tk, tv = (graph.tensor(uid=uid, dim=dim, stride=stride, data_type=fp8)
                      for uid, (dim, stride) in ((cls.Q, q), (cls.K, k), (cls.V, v)))
        dq, dk, dv, ds, ss, so = (graph.tensor(uid=uid, dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=fp32)
                                  for uid in (cls.DESCALE_Q, cls.DESCALE_K, cls.DESCALE_V, cls.DESCALE_S, cls.SCALE_S,
                                              cls.SCALE_O))
        o, _stats, _amax_s, amax_o = graph.sdpa_fp8(
            q=tq, k=tk, v=tv, descale_q=dq, descale_k=dk, descale_v=dv, descale_s=ds, scale_s=ss, scale_o=so,
            generate_stats=False, attn_scale=q[0][-1] ** -0.5, use_causal_mask=False)
        o.set_uid(cls.O).set_output(True).set_dim(out[0]).set_stride(out[1]).set_data_type(cudnn.data_type.BFLOAT16)
        amax_o.set_uid(cls.AMAX_O).set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1)).set_data_type(fp32)
        return graph

    def run(self, q8: Tensor, k8: Tensor, v8: Tensor, descale_q: Tensor, descale_k: Tensor, descale_v: Tensor,
            out: Tensor) -> None:
        self.cudnn.set_stream(handle=self.handle, stream=torch.cuda.current_stream(self.device).cuda_stream)
        pack = {self.Q: q8, self.K: k8, self.V: v8, self.O: out, self.DESCALE_Q: descale_q, self.DESCALE_K: descale_k,
                self.DESCALE_V: descale_v, self.DESCALE_S: self.descale_s, self.SCALE_S: self.scale_s,
                self.SCALE_O: self.scale_o, self.AMAX_O: self.amax_o}
        self.graph.execute(pack, self.workspace, handle=self.handle)
