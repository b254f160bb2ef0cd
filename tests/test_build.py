"""TensorRT-RTX engines built for real on the CPU from exported graphs; plan headers; build errors."""

import pytest
import torch

pytest.importorskip("onnxruntime")
trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed (pip install 'pid-sdk[rtx]')")

from export.build import BuildError, BuildOptions, build_engines, load_matrix  # noqa: E402
from export.engine_set import export_engine_set  # noqa: E402
from pid_sdk.buckets import Bucket  # noqa: E402
from pid_sdk.errors import CheckpointError, ConfigError  # noqa: E402
from pid_sdk.runtime.manifest import read_manifest  # noqa: E402
from pid_sdk.runtime.selection import DeviceInfo, select_entry  # noqa: E402
from pid_sdk.runtime.tensorrt_backend import check_plan, plan_header  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rtx")
    export_engine_set(folder, preset="tiny-pid-2kto4k-v1.5", sizes=[Bucket(64, 96)], precisions=["fp32", "bf16"],
                      attention_dtype="fp16", log=lambda *_: None)
    lines = []
    entries = build_engines(folder, "rtx5090", options=BuildOptions(timing_cache=folder / "timing.cache"),
                            log=lines.append)
    return folder, entries, lines


def test_engines_are_built_and_recorded(built):
    folder, entries, lines = built
    assert {e.precision for e in entries} == {"fp32", "bf16"}
    assert len(lines) == 6 and all(line.startswith("built rtx5090/") and "MiB" in line for line in lines)
    manifest = read_manifest(folder)
    rtx = [e for e in manifest.entries if e.backend == "tensorrt_rtx"]
    assert len(rtx) == 2
    for e in rtx:
        assert e.sm == (120,) and e.trt_version == trt.__version__ and e.source.startswith("onnx:")
        for rel in e.files.values():
            data = (folder / rel).read_bytes()
            assert plan_header(data) == ("tensorrt_rtx", tuple(int(v) for v in trt.__version__.split(".")[:3]))
            assert len(data) > 10_000
    assert (folder / "timing.cache").stat().st_size > 0


def test_selection_finds_the_built_engine_for_an_rtx_5090(built):
    folder, _, _ = built
    manifest = read_manifest(folder)
    rtx5090 = DeviceInfo(120, tensorrt_rtx=trt.__version__)
    assert select_entry(manifest, str(folder), "tensorrt", (64, 96), 1, rtx5090).precision == "bf16"
    with pytest.raises(ConfigError, match="this GPU is sm 90"):
        select_entry(manifest, str(folder), "tensorrt", (64, 96), 1, DeviceInfo(90, tensorrt_rtx=trt.__version__))


def test_plan_header_is_checked_before_deserialising(built):
    folder, entries, _ = built
    entry = entries[0]
    path = folder / entry.files["text"]
    data = path.read_bytes()
    check_plan(data, path, entry, trt.__version__)
    newer = data[:24] + bytes([data[24], data[25] + 1, data[26]]) + data[27:]
    with pytest.raises(CheckpointError, match="was built by tensorrt_rtx"):
        check_plan(newer, path, entry, trt.__version__)
    with pytest.raises(CheckpointError, match="not a TensorRT plan"):
        check_plan(b"PK\x03\x04" + data[4:], path, entry, trt.__version__)


def test_attention_outside_fp16_is_refused_before_tensorrt_rtx_can_crash(tmp_path):
    export_engine_set(tmp_path, preset="tiny", sizes=[Bucket(64, 64)], log=lambda *_: None)
    with pytest.raises(BuildError, match="--attention-dtype fp16"):
        build_engines(tmp_path, "rtx5090", log=lambda *_: None)


def test_tampered_graph_is_refused(tmp_path):
    export_engine_set(tmp_path, preset="tiny", sizes=[Bucket(64, 64)], attention_dtype="fp16", log=lambda *_: None)
    entry = read_manifest(tmp_path).entries[0]
    path = tmp_path / entry.files["adapter"]
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(CheckpointError, match="sha256"):
        build_engines(tmp_path, "rtx5090", log=lambda *_: None)


def test_stripped_plans_need_a_gpu_for_tensorrt_rtx(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this checks the CPU-only refusal")
    export_engine_set(tmp_path, preset="tiny", sizes=[Bucket(64, 64)], attention_dtype="fp16", log=lambda *_: None)
    with pytest.raises(BuildError, match="drop --strip"):
        build_engines(tmp_path, "rtx5090", options=BuildOptions(strip=True), log=lambda *_: None)


def test_unknown_targets(tmp_path):
    with pytest.raises(ConfigError, match="Unknown build target"):
        build_engines(tmp_path, "rtx6000")
    bad = tmp_path / "m.json"
    bad.write_text('{"targets": {"h100": {}, "mi300": {}}}')
    with pytest.raises(ConfigError, match="unknown targets"):
        load_matrix(bad)
    assert set(load_matrix()["targets"]) == {"rtx5090", "h100", "gb200"}


def test_full_tensorrt_is_reported_missing_not_faked(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("full TensorRT is installed here")
    except ImportError:
        pass
    export_engine_set(tmp_path, preset="tiny", sizes=[Bucket(64, 64)], log=lambda *_: None)
    with pytest.raises(ConfigError, match="needs the `tensorrt` package"):
        build_engines(tmp_path, "h100", log=lambda *_: None)
