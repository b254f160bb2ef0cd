"""FP8: modelopt calibration over the 4 student steps, versioned scales, standard Q/DQ, ONNX Runtime parity."""

import json

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("modelopt.torch.quantization", reason="nvidia-modelopt is not installed")

import onnx  # noqa: E402

import pid_sdk  # noqa: E402
from export.export_folder import export_engine_set  # noqa: E402
from export.fp8 import load_scales  # noqa: E402
from pid_sdk.fp8 import fp8_layers  # noqa: E402
from pid_sdk.buckets import Bucket  # noqa: E402
from pid_sdk.compare import run_parity  # noqa: E402
from pid_sdk.config import PRESETS  # noqa: E402
from pid_sdk.errors import CheckpointError  # noqa: E402
from pid_sdk.model import build_model  # noqa: E402
from pid_sdk.runtime.manifest import read_engine_manifest  # noqa: E402


@pytest.fixture(scope="module")
def fp8_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp8")
    lines = []
    export_engine_set(folder, preset="tiny-pid-2kto4k-v1.5", sizes=[Bucket(64, 96)], precisions=["fp8-fp32"],
                      log=lines.append)
    return folder, lines


def test_only_the_mmdit_linears_are_quantized():
    with torch.device("meta"):
        names = fp8_layers(build_model(PRESETS["pid-2k"]))
    assert len(names) == 14 * 10 - 4  # qkv, proj, 3 SwiGLU per stream; not the last block's text output
    assert all(n.startswith("patch_blocks.") and "adaLN" not in n for n in names)


def test_scales_file_is_versioned_and_covers_every_layer(fp8_set):
    folder, lines = fp8_set
    path = folder / "fp8_scales-64x96.json"
    data = json.loads(path.read_text())
    assert data["format"] == "pid-sdk-fp8-scales" and data["format_version"] == 1
    assert data["calibration"]["steps"] == 4 and data["calibration"]["bucket"] == [64, 96]
    layers = fp8_layers(build_model(PRESETS["tiny-pid-2kto4k-v1.5"]))
    assert sorted(data["scales"]) == sorted(layers)
    assert all(v["input_amax"] > 0 and v["weight_amax"] > 0 for v in data["scales"].values())
    assert lines[:2] == ["exporting 1 graph set (onnx): 64x96 x fp8-fp32",
                         "calibrating FP8 linears at 64x96: 4 latents x 4 steps of the PyTorch model"]
    assert any(line.startswith("calibrated") for line in lines)


def test_rebuild_reuses_the_scales_without_recalibrating(fp8_set):
    folder, _ = fp8_set
    lines = []
    export_engine_set(folder, sizes=[Bucket(64, 96)], precisions=["fp8-fp32"], log=lines.append)
    assert lines[:2] == ["exporting 1 graph set (onnx): 64x96 x fp8-fp32",
                         "using fp8_scales-64x96.json (no recalibration)"]
    with pytest.raises(CheckpointError, match="calibrated for other weights"):
        load_scales(folder / "fp8_scales-64x96.json", "0" * 64)


def test_graph_has_standard_fp8_qdq_only_around_quantized_linears(fp8_set):
    folder, _ = fp8_set
    entry = read_engine_manifest(folder).entries[0]
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


# --- FP8 attention inputs (--attention-dtype fp8) ------------------------------------------------------------------
@pytest.fixture(scope="module")
def fp8_attention_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp8-attention")
    lines = []
    export_engine_set(folder, preset="tiny", sizes=[Bucket(64, 64)], precisions=["fp8-fp32", "fp8"],
                      attention_dtype="fp8", log=lines.append)
    return folder, lines


def test_fp8_attention_rounds_q_k_v_of_every_attention_through_qdq(fp8_attention_set):
    from export.fp8 import attention_modules

    folder, lines = fp8_attention_set
    scales = json.loads((folder / "fp8_attention_scales-64x64.json").read_text())["scales"]
    assert sorted(scales) == sorted(attention_modules(build_model(PRESETS["tiny"])))
    assert all(min(s.values()) > 0 for s in scales.values())
    entry = next(e for e in read_engine_manifest(folder).entries if e.precision == "fp8-fp32")
    assert entry.attention_dtype == "fp8"
    graph = onnx.load(str(folder / entry.files["denoiser"])).graph
    made_by = {out: n for n in graph.node for out in n.output}

    def through_dq(name: str) -> bool:  # the input is a DequantizeLinear's output, maybe behind a Cast to fp16
        node = made_by.get(name)
        while node is not None and node.op_type == "Cast":
            node = made_by.get(node.input[0])
        return node is not None and node.op_type == "DequantizeLinear"

    attentions = [n for n in graph.node if n.op_type == "Attention"]
    assert len(attentions) == len(scales) and all(through_dq(i) for n in attentions for i in n.input[:3])


def test_fp8_attention_graphs_stay_within_the_fp8_tolerance_and_reuse_their_scales(fp8_attention_set):
    from pid_sdk.compare import compare_folder

    folder, _ = fp8_attention_set
    results = compare_folder(folder, "onnxruntime")
    assert [r.status for r in results] == ["passed", "passed"], "\n".join(map(str, results))
    lines = []
    export_engine_set(folder, precisions=["fp8-fp32"], sizes=[Bucket(64, 64)], attention_dtype="fp8",
                      log=lines.append)
    assert "using fp8_attention_scales-64x64.json (no recalibration)" in lines


def test_fp8_attention_needs_fp8_graphs(tmp_path):
    from pid_sdk.errors import ConfigError

    with pytest.raises(ConfigError, match="FP8 attention goes with FP8 graphs"):
        export_engine_set(tmp_path / "set", preset="tiny", sizes=[Bucket(64, 64)], precisions=["fp32"],
                          attention_dtype="fp8", log=lambda *_: None)
    assert not (tmp_path / "set").exists()


def test_tensorrt_rtx_builds_the_fp8_attention_graphs(fp8_attention_set, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed")
    import shutil

    from export.build import build_engines

    folder = tmp_path / "copy"
    shutil.copytree(fp8_attention_set[0], folder)
    built = build_engines(folder, "rtx5090", precisions=["fp8"], log=lambda *_: None)
    assert len(built) == 1 and built[0].attention_dtype == "fp8"
    assert all((folder / rel).stat().st_size > 0 for rel in built[0].files.values())


# --- FP8 multi-head attention as TensorRT fuses it (--attention-dtype fp8-mha) ------------------------------------
@pytest.fixture(scope="module")
def fp8_mha_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp8-mha")
    export_engine_set(folder, preset="tiny", sizes=[Bucket(64, 64)], precisions=["fp8-fp32", "fp8"],
                      attention_dtype="fp8-mha", log=lambda *_: None)
    return folder


def test_fp8_mha_writes_out_the_attention_with_a_quantised_softmax(fp8_mha_set):
    """No `Attention` op: per attention, Q/DQ feeding both MatMuls directly and a Q/DQ of scale 1/448 on the
    Softmax output (the pattern TensorRT fuses into one FP8 MHA kernel)."""
    entry = next(e for e in read_engine_manifest(fp8_mha_set).entries if e.precision == "fp8")
    assert entry.attention_dtype == "fp8-mha"
    graph = onnx.load(str(fp8_mha_set / entry.files["denoiser"])).graph
    made_by = {out: n for n in graph.node for out in n.output}
    used_by: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            used_by.setdefault(i, []).append(n)
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    constants.update({n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                      if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR})
    softmaxes = [n for n in graph.node if n.op_type == "Softmax"]
    assert not [n for n in graph.node if n.op_type == "Attention"]
    assert len(softmaxes) == len(json.loads((fp8_mha_set / "fp8_attention_scales-64x64.json").read_text())["scales"])
    for softmax in softmaxes:
        first = made_by[softmax.input[0]]
        assert first.op_type == "MatMul" and all(made_by[i].op_type == "DequantizeLinear" for i in first.input)
        [quantize] = used_by[softmax.output[0]]
        assert quantize.op_type == "QuantizeLinear"
        assert abs(float(constants[quantize.input[1]]) - 1 / 448) < 1e-6
        [dequantize] = used_by[quantize.output[0]]
        [second] = used_by[dequantize.output[0]]
        assert second.op_type == "MatMul" and all(made_by[i].op_type == "DequantizeLinear" for i in second.input)


def test_fp8_mha_graphs_stay_within_the_fp8_tolerance(fp8_mha_set):
    from pid_sdk.compare import compare_folder

    results = compare_folder(fp8_mha_set, "onnxruntime")
    assert [r.status for r in results] == ["passed", "passed"], "\n".join(map(str, results))


def test_tensorrt_rtx_builds_the_fp8_mha_graphs(fp8_mha_set, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed")
    import shutil

    from export.build import build_engines

    folder = tmp_path / "copy"
    shutil.copytree(fp8_mha_set, folder)
    built = build_engines(folder, "rtx5090", precisions=["fp8"], log=lambda *_: None)
    assert len(built) == 1 and built[0].attention_dtype == "fp8-mha"
    assert all((folder / rel).stat().st_size > 0 for rel in built[0].files.values())
