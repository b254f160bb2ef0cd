"""ONNX export of one graph set per (bucket, batch, precision): static shapes, opset 23, one `Attention` op each."""

from __future__ import annotations

import io
import logging
import time
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import torch
from torch import nn

from export.graphs import AdapterGraph, DenoiserGraph, TextGraph
from pid_sdk.buckets import Bucket
from pid_sdk.checkpoints import sha256_file
from pid_sdk.config import PiDConfig
from pid_sdk.errors import ConfigError
from pid_sdk.latents import get_latent_space
from pid_sdk.runtime.manifest import Entry
from pid_sdk.runtime.upcast import EXTERNAL_DATA_BYTES  # one size rule for exported graphs and their twins

OPSET = 23
# graph precision -> the dtype of everything that is not FP8 (fp8-fp32 runs under ONNX Runtime on a CPU)
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16,
              "fp8-fp32": torch.float32}
# --attention-dtype -> the attention's dtype; the FP8 forms round q, k, v (and, for fp8-mha, the softmax) first
ATTENTION_COMPUTE = {"fp16": torch.float16, "fp8": torch.float16, "fp8-mha": torch.float16}
FP8_ATTENTION = ("fp8", "fp8-mha")
FORBIDDEN_OPS = {"Einsum"}


def example_inputs(cfg: PiDConfig, bucket: Bucket, batch: int) -> dict[str, dict[str, torch.Tensor]]:
    """Zero tensors of the exact static shapes of each graph's inputs, keyed by graph and argument name."""
    b, a = cfg.backbone, cfg.adapter
    space = get_latent_space(cfg.latent_space)
    lh, lw = bucket.latent_size(space.factor, a.sr_scale)
    grid = (bucket.height // b.patch_size) * (bucket.width // b.patch_size)
    n_tokens = cfg.num_gates + (1 if a.pit_inject else 0)
    width = b.hidden_size if a.gate == "per_token_per_dim" else 1
    t = b.txt_max_length
    return {
        "text": {"text": torch.zeros(batch, t, b.txt_embed_dim)},
        "adapter": {"latent": torch.zeros(batch, a.latent_channels, lh, lw), "latent_sigma": torch.zeros(batch)},
        "denoiser": {"x": torch.zeros(batch, 3, bucket.height, bucket.width), "sigma": torch.zeros(batch),
                     "text_tokens": torch.zeros(batch, t, b.hidden_size),
                     "latent_tokens": torch.zeros(batch, n_tokens, grid, b.hidden_size),
                     "gate_offsets": torch.zeros(batch, n_tokens, grid, width)},
    }


OUTPUT_NAMES = {"text": ["text_tokens"], "adapter": ["latent_tokens", "gate_offsets"], "denoiser": ["v"]}


def graph_modules(model: nn.Module, cfg: PiDConfig, bucket: Bucket, dtype: torch.dtype,
                  device: str = "cpu") -> dict[str, nn.Module]:
    geo = model.geometry(bucket.height, bucket.width, cfg.backbone.txt_max_length, device)
    return {"text": TextGraph(model, dtype), "adapter": AdapterGraph(model, geo, dtype),
            "denoiser": DenoiserGraph(model, geo, dtype)}


def export_graph_set(model: nn.Module, cfg: PiDConfig, bucket: Bucket, folder: Path, *, batch: int = 1,
                     precision: str = "fp32", attention_dtype: str | None = None, fp8_scales: dict | None = None,
                     attention_scales: dict | None = None, log=print) -> Entry:
    """Write text/adapter/denoiser.onnx under `folder` (the engine set) and return their manifest entry.
    `attention_dtype` "fp8": q, k and v rounded to FP8 by Q/DQ pairs with `attention_scales`, the attention then
    computed in fp16 (what TensorRT-RTX builds); "fp8-mha": the same and the softmax output too, the attention
    written out as TensorRT's FP8 multi-head-attention pattern instead of one `Attention` op."""
    if precision not in PRECISIONS:
        raise ConfigError("Unknown precision.", received=precision, expected=", ".join(PRECISIONS),
                          fix="pass --precision fp32 (or bf16, fp16, fp8, fp8-fp32)")
    dtype = PRECISIONS[precision]
    model = model.to(dtype).eval()
    if precision.startswith("fp8"):
        from export.fp8 import apply_fp8

        apply_fp8(model, fp8_scales)
    if attention_dtype in FP8_ATTENTION:
        from export.fp8 import apply_fp8_attention

        apply_fp8_attention(model, attention_scales, mha=attention_dtype == "fp8-mha")
    model.set_attention_dtype(ATTENTION_COMPUTE[attention_dtype] if attention_dtype else None)
    variant = precision + (f"-attn-{attention_dtype}" if attention_dtype else "")  # as Entry.variant
    rel_dir = Path("onnx") / f"{bucket.name}-b{batch}-{variant}"
    (folder / rel_dir).mkdir(parents=True, exist_ok=True)
    inputs = example_inputs(cfg, bucket, batch)
    files, hashes, io_spec = {}, {}, {}
    for name, module in graph_modules(model, cfg, bucket, dtype).items():
        rel = rel_dir / f"{name}.onnx"
        t0 = time.perf_counter()
        export_one(module, inputs[name], OUTPUT_NAMES[name], folder / rel, fp8=precision.startswith("fp8"))
        files[name] = str(rel)
        for part in (rel, rel.with_name(rel.name + ".data")):  # the graph, and its external weights if any
            if (folder / part).exists():
                hashes[str(part)] = sha256_file(folder / part)
        io_spec[name] = describe_io(folder / rel)
        log(f"exported {rel} in {time.perf_counter() - t0:.1f}s ({(folder / rel).stat().st_size / 2**20:.1f} MiB)")
    model.set_attention_dtype(None)
    return Entry("onnx", (bucket.height, bucket.width), batch, precision, files, hashes, io_spec,
                 attention_dtype=attention_dtype)


def export_one(module: nn.Module, inputs: dict[str, torch.Tensor], outputs: list[str], path: Path,
               fp8: bool = False) -> None:
    large = sum(p.numel() * p.element_size() for p in module.parameters()) > EXTERNAL_DATA_BYTES
    table = None
    if fp8:
        from export.fp8 import onnx_translation

        table = onnx_translation()
    with torch.no_grad(), warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(module, tuple(inputs.values()), dynamo=True, opset_version=OPSET,
                                    input_names=list(inputs), output_names=outputs, verbose=False,
                                    custom_translation_table=table)
    program.save(str(path), external_data=large)


def describe_io(path: Path) -> dict:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def tensors(values) -> list[dict]:
        return [{"name": v.name, "shape": [d.dim_value for d in v.type.tensor_type.shape.dim],
                 "dtype": onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower()} for v in values]

    return {"inputs": tensors(graph.input), "outputs": tensors(graph.output)}


def inspect_graph(path: Path) -> dict:
    """What a reviewer checks: op counts, forbidden / complex / custom ops, static shapes, Q/DQ pairs."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops: dict[str, int] = {}
    for node in model.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        ops[key] = ops.get(key, 0) + 1
    complex_types = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}
    values = list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)
    io = [v for v in list(model.graph.input) + list(model.graph.output)]
    return {
        "ops": ops,
        "forbidden": sorted(set(ops) & FORBIDDEN_OPS),
        "custom": sorted(k for k in ops if "::" in k),
        "complex": any(v.type.tensor_type.elem_type in complex_types for v in values),
        "static": all(d.HasField("dim_value") and d.dim_value > 0 for v in io for d in v.type.tensor_type.shape.dim),
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
    }
