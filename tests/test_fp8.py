"""FP8: modelopt calibration over the 4 student steps, versioned scales, standard Q/DQ, ONNX Runtime parity."""

import json

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("modelopt.torch.quantization", reason="nvidia-modelopt is not installed")

import onnx  # noqa: E402

import pid_sdk  # noqa: E402
from export.engine_set import export_engine_set  # noqa: E402
from export.fp8 import load_scales, quantized_layers  # noqa: E402
from pid_sdk.buckets import Bucket  # noqa: E402
from pid_sdk.compare import run_parity  # noqa: E402
from pid_sdk.config import PRESETS  # noqa: E402
from pid_sdk.errors import CheckpointError  # noqa: E402
from pid_sdk.model import build_model  # noqa: E402
from pid_sdk.runtime.manifest import read_manifest  # noqa: E402


@pytest.fixture(scope="module")
def fp8_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp8")
    lines = []
    export_engine_set(folder, preset="tiny-pid-2kto4k-v1.5", sizes=[Bucket(64, 96)], precisions=["fp8-fp32"],
                      log=lines.append)
    return folder, lines


def test_only_transformer_linears_are_quantized():
    names = quantized_layers(build_model(PRESETS["pid-2k"]))
    assert len(names) == 14 * 10 - 4 + 2 * 4  # qkv, proj, 3 SwiGLU per stream; not the last block's text output
    assert not [n for n in names if "adaLN" in n or "embedder" in n or "lq_proj" in n or "final" in n]


def test_scales_file_is_versioned_and_covers_every_layer(fp8_set):
    folder, lines = fp8_set
    path = folder / "fp8_scales-64x96.json"
    data = json.loads(path.read_text())
    assert data["format"] == "pid-sdk-fp8-scales" and data["format_version"] == 1
    assert data["calibration"]["steps"] == 4 and data["calibration"]["bucket"] == [64, 96]
    layers = quantized_layers(build_model(PRESETS["tiny-pid-2kto4k-v1.5"]))
    assert sorted(data["scales"]) == sorted(layers)
    assert all(v["input_amax"] > 0 and v["weight_amax"] > 0 for v in data["scales"].values())
    assert any(line.startswith("calibrated") for line in lines)


def test_rebuild_reuses_the_scales_without_recalibrating(fp8_set):
    folder, _ = fp8_set
    lines = []
    export_engine_set(folder, sizes=[Bucket(64, 96)], precisions=["fp8-fp32"], log=lines.append)
    assert lines[0] == "using fp8_scales-64x96.json (no recalibration)"
    with pytest.raises(CheckpointError, match="calibrated for other weights"):
        load_scales(folder / "fp8_scales-64x96.json", "0" * 64)


def test_graph_has_standard_fp8_qdq_only_around_quantized_linears(fp8_set):
    folder, _ = fp8_set
    entry = read_manifest(folder).entries[0]
    graph = onnx.load(str(folder / entry.files["denoiser"])).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("QuantizeLinear") == ops.count("DequantizeLinear")
    assert all(n.domain in ("", "ai.onnx") for n in graph.node)  # no custom / TensorRT-only domains
    consts = {i.name: i for i in graph.initializer}
    for n in graph.node:
        for node_attr in n.attribute:
            if n.op_type == "Constant" and node_attr.t.data_type == onnx.TensorProto.FLOAT8E4M3FN:
                consts[n.output[0]] = node_attr.t
    zero_points = [n.input[2] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert all(consts[z].data_type == onnx.TensorProto.FLOAT8E4M3FN for z in zero_points)
    adapter = onnx.load(str(folder / entry.files["adapter"])).graph
    assert "QuantizeLinear" not in [n.op_type for n in adapter.node]


def test_onnxruntime_runs_the_fp8_graph_within_the_fp8_tolerance(fp8_set):
    folder, _ = fp8_set
    ref = pid_sdk.Decoder.load(folder, backend="pytorch")
    ort = pid_sdk.Decoder.load(folder, backend="onnxruntime")
    latent = torch.randn(1, 16, 2, 3, generator=torch.Generator().manual_seed(0))
    report = run_parity(ref, ort, latent, precision="fp8-fp32")
    assert report.passed, str(report)
    assert report.image.max_abs > 1e-3  # it really is quantized: not the fp32 result
