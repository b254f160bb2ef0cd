"""TensorRT-RTX engines built for real on the CPU from exported graphs; plan headers; build errors."""

import pytest
import torch

pytest.importorskip("onnxruntime")
trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed (pip install 'pid-sdk[rtx]')")

from export.build import BuildError, BuildOptions, build_engines, load_matrix  # noqa: E402
from export.export_folder import export_engine_set  # noqa: E402
from pid_sdk.buckets import Bucket  # noqa: E402
from pid_sdk.errors import CheckpointError, ConfigError  # noqa: E402
from pid_sdk.runtime.manifest import read_engine_manifest  # noqa: E402
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
    note, *built_lines = lines
    assert "--timing-cache does not apply to TensorRT-RTX" in note and not (folder / "timing.cache").exists()
    assert len(built_lines) == 6 and all(line.startswith("built rtx5090/") and "MiB" in line for line in built_lines)
    assert not list(folder.rglob("*.tmp"))
    manifest = read_engine_manifest(folder)
    rtx = [e for e in manifest.entries if e.backend == "tensorrt_rtx"]
    assert len(rtx) == 2
    for e in rtx:
        assert e.sm == (120,) and e.trt_version == trt.__version__ and e.source.startswith("onnx:")
        for rel in e.files.values():
            data = (folder / rel).read_bytes()
            assert plan_header(data) == ("tensorrt_rtx", tuple(int(v) for v in trt.__version__.split(".")[:3]))
            assert len(data) > 10_000


def test_selection_finds_the_built_engine_for_an_rtx_5090(built):
    folder, _, _ = built
    manifest = read_engine_manifest(folder)
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


def test_a_folder_with_graphs_rtx_cannot_build_builds_the_rest_and_names_the_export_for_them(tmp_path):
    from conftest import copy_folder

    export_engine_set(tmp_path / "f", preset="tiny", sizes=[Bucket(64, 64)], log=lambda *_: None)
    export_engine_set(tmp_path / "f", sizes=[Bucket(64, 64)], attention_dtype="fp16", log=lambda *_: None)
    before = copy_folder(tmp_path / "f", tmp_path / "before")
    lines = []
    [entry] = build_engines(tmp_path / "f", "rtx5090", log=lines.append)
    assert entry.attention_dtype == "fp16" and entry.backend == "tensorrt_rtx"
    assert lines[0] == (f"skipped: onnx:-:64x64:b1:fp32 computes attention in fp32; TensorRT-RTX "
                        f"builds its fused attention from fp16 inputs. fix: pid-sdk export {tmp_path / 'f'} --size "
                        "64x64 --batch 1 --precision fp32 --attention-dtype fp16")
    assert len(read_engine_manifest(tmp_path / "f").entries) == len(read_engine_manifest(before).entries) + 1


def test_tampered_graph_is_refused(tmp_path):
    export_engine_set(tmp_path, preset="tiny", sizes=[Bucket(64, 64)], attention_dtype="fp16", log=lambda *_: None)
    entry = read_engine_manifest(tmp_path).entries[0]
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


# --- issue 30: builds, headers, bindings, integrity ------------------------------------------------------------
def test_version_compatible_plans_are_judged_by_one_rule(built):
    """The header check and selection agree: a TensorRT-RTX plan runs on its own release only, whatever its flags;
    a version-compatible TensorRT plan on its release or a later one of the documented pairs."""
    from dataclasses import replace

    from pid_sdk.runtime.selection import runs_on

    folder, entries, _ = built
    path = folder / entries[0].files["text"]
    data = path.read_bytes()
    major, minor, patch = data[24:27]
    own, later = f"{major}.{minor}.{patch}", f"{major}.{minor + 1}.0"
    rtx = replace(entries[0], version_compatible=True)
    check_plan(data, path, rtx, own)
    assert runs_on(rtx, DeviceInfo(120, tensorrt_rtx=own))[0]
    with pytest.raises(CheckpointError, match="a later one it is documented to run on"):
        check_plan(data, path, rtx, later)
    assert not runs_on(rtx, DeviceInfo(120, tensorrt_rtx=later))[0]
    trt = replace(entries[0], backend="tensorrt", version_compatible=True, trt_version="10.14.1")
    tensorrt_plan = b"ftrt" + data[4:24] + bytes([10, 14, 1]) + data[27:]
    check_plan(tensorrt_plan, path, trt, "10.15.0")  # later, same major: runs
    assert runs_on(replace(trt, sm=(90,)), DeviceInfo(90, tensorrt="10.15.0"))[0]
    with pytest.raises(CheckpointError, match="was built by tensorrt 10.14.1"):
        check_plan(tensorrt_plan, path, trt, "10.13.0")
    assert not runs_on(replace(trt, sm=(90,)), DeviceInfo(90, tensorrt="10.13.0"))[0]


@pytest.mark.parametrize("options,match", [
    (BuildOptions(version_compatible=True), "cannot build version-compatible plans"),
    (BuildOptions(hardware_compatibility="ampere_plus"), "applies to full TensorRT only"),
])
def test_options_tensorrt_rtx_cannot_honour_are_refused_before_building(tmp_path, options, match):
    export_engine_set(tmp_path, preset="tiny", sizes=[Bucket(64, 64)], attention_dtype="fp16", log=lambda *_: None)
    before = (tmp_path / "manifest.json").read_text()
    with pytest.raises(ConfigError, match=match):
        build_engines(tmp_path, "rtx5090", options=options, log=lambda *_: None)
    assert (tmp_path / "manifest.json").read_text() == before and not (tmp_path / "rtx5090").exists()


def test_full_tensorrt_builds_refuse_a_target_they_cannot_produce():
    from export.build import built_sm

    if torch.cuda.is_available():
        pytest.skip("checks the refusal on a machine without a GPU")
    with pytest.raises(ConfigError, match="on a GPU, and this machine has none"):
        built_sm("gb200", (100,), BuildOptions())


def test_a_failed_build_leaves_the_old_plans_and_their_entry(built, tmp_path, monkeypatch):
    import shutil

    import export.build as build

    folder = tmp_path / "copy"
    shutil.copytree(built[0], folder)
    before = (folder / "manifest.json").read_text()
    plans = {p: p.read_bytes() for p in (folder / "rtx5090").rglob("*.plan")}
    real, calls = build.build_plan, []

    def fails_on_the_second_graph(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise BuildError("simulated builder failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(build, "build_plan", fails_on_the_second_graph)
    with pytest.raises(BuildError, match="simulated"):
        build_engines(folder, "rtx5090", precisions=["bf16"], log=lambda *_: None)
    assert (folder / "manifest.json").read_text() == before
    assert {p: p.read_bytes() for p in (folder / "rtx5090").rglob("*.plan")} == plans
    assert not list(folder.rglob("*.tmp"))


def test_matrix_builds_what_this_machine_can_and_reports_the_rest(tmp_path):
    import json

    from export.build import build_matrix

    export_engine_set(tmp_path, preset="tiny", sizes=[Bucket(64, 64)], precisions=["bf16"], attention_dtype="fp16",
                      log=lambda *_: None)
    matrix = {"targets": {"rtx5090": {"precisions": ["bf16"], "attention_dtype": "fp16"},
                          "h100": {"precisions": ["bf16", "fp8"]}},
              "presets": {"tiny": {"buckets": ["64x64", "64x128"]}}, "batch": 1}
    (tmp_path / "matrix.json").write_text(json.dumps(matrix))
    result = build_matrix(tmp_path, load_matrix(tmp_path / "matrix.json"), log=lambda *_: None)
    assert [(e.target, e.bucket, e.precision) for e in result.built] == [("rtx5090", (64, 64), "bf16")]
    assert len(result.elsewhere) == 1 and result.elsewhere[0].startswith("h100: ")
    assert result.unexported == [f"rtx5090: pid-sdk export {tmp_path} --size 64x128 --precision bf16 "
                                 "--attention-dtype fp16"]
    other = build_matrix(tmp_path, {"targets": {}, "presets": {"pid-2k": {"buckets": ["2048x2048"]}}})
    assert other.built == other.elsewhere == other.unexported == []  # tiny is not listed: its exported sizes


def test_the_whole_build_matrix_exports_and_builds_into_one_folder(tmp_path, capsys):
    """engines/matrix.json as it ships: rtx5090 with fp16 attention, h100 and gb200 native, bf16 and fp8 each; the
    export writes all four graph variants, the build makes the RTX plans here and names the hosts the rest needs."""
    from export.build import MATRIX
    from pid_sdk.cli import main

    folder = tmp_path / "engines"
    assert main(["export", str(folder), "--preset", "tiny", "--size", "64x64", "--matrix", str(MATRIX)]) == 0
    keys = sorted(e.key for e in read_engine_manifest(folder).entries)
    assert keys == ["onnx:-:64x64:b1:bf16", "onnx:-:64x64:b1:bf16-attn-fp16", "onnx:-:64x64:b1:fp8",
                    "onnx:-:64x64:b1:fp8-attn-fp16"]
    capsys.readouterr()
    assert main(["build", str(folder), "--matrix", str(MATRIX)]) == 0
    out = capsys.readouterr().out
    built = sorted(e.key for e in read_engine_manifest(folder).entries if e.backend == "tensorrt_rtx")
    assert built == ["tensorrt_rtx:rtx5090:64x64:b1:bf16-attn-fp16", "tensorrt_rtx:rtx5090:64x64:b1:fp8-attn-fp16"]
    assert "needs another host: h100" in out and "needs another host: gb200" in out and "not exported" not in out


def test_the_manifests_bindings_are_what_tensorrt_rtx_parses(built):
    """The runtime binds buffers by the manifest's I/O names, shapes and dtypes: they must be TensorRT's own."""
    from pid_sdk.runtime.tensorrt_backend import io_spec

    folder, entries, _ = built
    entry = entries[0]
    spec = io_spec(entry)
    logger = trt.Logger(trt.Logger.ERROR)
    for graph, onnx_rel in read_engine_manifest(folder).entries[0].files.items():
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        assert trt.OnnxParser(network, logger).parse_from_file(str(folder / onnx_rel))
        tensors = [network.get_input(i) for i in range(network.num_inputs)]
        tensors += [network.get_output(i) for i in range(network.num_outputs)]
        parsed = [(t.name, list(t.shape), t.dtype) for t in tensors]
        manifest = [(t["name"], t["shape"], t["dtype"]) for t in entry.io[graph]["inputs"] + entry.io[graph]["outputs"]]
        assert [(n, s) for n, s, _ in parsed] == [(n, s) for n, s, _ in manifest]
        assert all(d == trt.DataType.FLOAT for _, _, d in parsed)
        assert all(spec[n]["dtype"] == "float" for n, *_ in parsed)


def test_the_librarys_header_check_finds_a_malformed_plan(built):
    from pid_sdk.runtime.tensorrt_backend import plan_diagnostics

    folder, entries, _ = built
    runtime = trt.Runtime(trt.Logger(trt.Logger.INTERNAL_ERROR))
    assert runtime.engine_header_size > 0
    assert "MALFORMED_ENGINE" in plan_diagnostics(trt, runtime, b"\x00" * runtime.engine_header_size)


def test_verify_checks_every_file_without_running_anything(built, tmp_path, capsys):
    import json
    import shutil

    from pid_sdk.checkpoints import sha256_file
    from pid_sdk.cli import main

    folder = tmp_path / "copy"
    shutil.copytree(built[0], folder)
    assert main(["verify", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"tensorrt_rtx {'.'.join(trt.__version__.split('.')[:3])}" in out and "external data confined" in out
    assert "5 of 5 checks passed" in out
    plan = folder / read_engine_manifest(folder).entries[-1].files["denoiser"]  # a malformed plan, re-hashed by hand
    plan.write_bytes(b"vtrt" + b"\x00" * 60 + plan.read_bytes()[64:])
    data = json.loads((folder / "manifest.json").read_text())
    data["entries"][-1]["sha256"][str(plan.relative_to(folder))] = sha256_file(plan)
    from conftest import sealed

    (folder / "manifest.json").write_text(json.dumps(sealed(data)))
    assert main(["verify", str(folder)]) == 2
    out = capsys.readouterr().out
    assert "FAIL tensorrt_rtx:rtx5090:64x96:b1:bf16-attn-fp16" in out and ("malformed" in out or "was built by" in out)


def test_a_build_stops_at_ctrl_c_through_its_progress_monitor(built, monkeypatch, ctrl_c):
    """The library's own cancellation, which Ctrl-C triggers (pid_sdk/interrupts.py runs the build in a worker and
    calls `stop`): a monitor that answers "stop" ends the build at its next step, with no plan, long before a whole
    build of the 2k->4k tiny denoiser took (the fixture's log); an interrupt during a build comes back as
    KeyboardInterrupt."""
    import _thread
    import threading
    import time

    import export.build as build

    folder, entries, lines = built
    graph = folder / next(e for e in read_engine_manifest(folder).entries if e.backend == "onnx").files["denoiser"]
    whole = max(float(line.split(" in ")[1].split("s ")[0]) for line in lines if "denoiser.plan" in line)
    original = build._stoppable_monitor

    def stopped(library):
        monitor = original(library)
        monitor.stop()
        return monitor

    monkeypatch.setattr(build, "_stoppable_monitor", stopped)
    started = time.monotonic()
    with pytest.raises(BuildError, match="failed to build"):
        build.build_plan(trt, "tensorrt_rtx", graph, (120,), BuildOptions())
    assert time.monotonic() - started < whole / 3, f"a whole build took {whole:.1f} s"
    monkeypatch.undo()
    threading.Timer(0.2, _thread.interrupt_main).start()
    with pytest.raises(KeyboardInterrupt):
        build.build_plan(trt, "tensorrt_rtx", graph, (120,), BuildOptions())
