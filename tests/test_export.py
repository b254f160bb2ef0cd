"""ONNX export, ONNX Runtime parity against PyTorch, the engine manifest and engine selection."""

import json
import warnings
from dataclasses import replace

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import pid_sdk  # noqa: E402
from export.export_folder import export_engine_set  # noqa: E402
from export.onnx_export import inspect_graph  # noqa: E402
from pid_sdk.buckets import Bucket  # noqa: E402
from pid_sdk.compare import TOLERANCES, compare, run_parity  # noqa: E402
from pid_sdk.config import PRESETS  # noqa: E402
from pid_sdk.errors import CheckpointError, ConfigError, PiDError  # noqa: E402
from pid_sdk.runtime.manifest import Entry, read_engine_manifest, write_manifest  # noqa: E402
from pid_sdk.runtime.selection import DeviceInfo, runs_on, select_entry  # noqa: E402
from conftest import copy_folder as copy  # noqa: E402

# one tiny preset per latent space, with a small non-square bucket each
CASES = {
    "flux1": ("tiny-pid-2k", "64x96"),
    "sd3": ("tiny-pid-2kto4k", "64x96"),
    "sdxl": ("tiny-pid-2kto4k-sdxl", "96x64"),
    "flux2": ("tiny-pid-2k-flux2", "64x128"),
    "flux2-v1.5": ("tiny-pid-2kto4k-v1.5-flux2", "64x128"),
    "qwenimage": ("tiny-pid-2kto4k-v1.5-qwenimage", "64x96"),
    "dinov2": ("tiny-pid-2k-dinov2", "128x64"),
    "siglip": ("tiny-pid-2k-sr8x-siglip", "128x256"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
    preset, size = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param.replace(".", ""))
    export_engine_set(folder, preset=preset, sizes=[Bucket.parse(size)], log=lambda *_: None)
    return folder, preset, Bucket.parse(size)


def test_graphs_are_static_opset_23_with_one_attention_op_per_attention(exported):
    folder, preset, _ = exported
    cfg = PRESETS[preset]
    entry = read_engine_manifest(folder).entries[0]
    report = {g: inspect_graph(folder / rel) for g, rel in entry.files.items()}
    for g, r in report.items():
        assert r["opset"] == 23 and r["static"] and not r["forbidden"] and not r["custom"] and not r["complex"], g
    assert report["denoiser"]["ops"]["Attention"] == cfg.backbone.patch_depth + cfg.backbone.pixel_depth
    assert "Attention" not in report["adapter"]["ops"] and "Softmax" not in report["denoiser"]["ops"]


def test_tensor_names_equal_forward_arguments(exported):
    entry = read_engine_manifest(exported[0]).entries[0]
    names = {g: ([t["name"] for t in io["inputs"]], [t["name"] for t in io["outputs"]]) for g, io in entry.io.items()}
    assert names == {"text": (["text"], ["text_tokens"]),
                     "adapter": (["latent", "latent_sigma"], ["latent_tokens", "gate_offsets"]),
                     "denoiser": (["x", "sigma", "text_tokens", "latent_tokens", "gate_offsets"], ["v"])}


def test_onnxruntime_matches_pytorch_per_step_and_image(exported):
    folder, preset, bucket = exported
    ref = pid_sdk.Decoder.load(folder, backend="pytorch")
    ort = pid_sdk.Decoder.load(folder, backend="onnxruntime")
    assert ort.backend_name == "onnxruntime"
    assert ort.runtime._create(ort.runtime.entry_for(bucket.height, bucket.width, 1)).providers_in_use == {
        "text": "CPUExecutionProvider", "adapter": "CPUExecutionProvider", "denoiser": "CPUExecutionProvider"}
    space = pid_sdk.get_latent_space(ref.latent_space)
    lh, lw = bucket.latent_size(space.factor, ref.config.adapter.sr_scale)
    latent = torch.randn(1, space.channels, lh, lw, generator=torch.Generator().manual_seed(0))
    report = run_parity(ref, ort, latent, precision="fp32", latent_sigma=0.2)
    assert report.passed, str(report)
    assert report.image.max_abs <= TOLERANCES["fp32"].image.max_abs and len(report.steps) == 4


def test_pytorch_fallback_is_the_reference(exported):
    folder, preset, bucket = exported
    ref = pid_sdk.Decoder.load(preset=preset)
    fallback = pid_sdk.Decoder.load(folder, backend="pytorch")
    space = pid_sdk.get_latent_space(ref.latent_space)
    z = torch.randn(1, space.channels, *bucket.latent_size(space.factor, ref.config.adapter.sr_scale))
    torch.testing.assert_close(fallback.decode(z, seed=1), ref.decode(z, seed=1), rtol=0, atol=0)


def test_loaded_weights_start_on_64_bytes(exported):
    model = pid_sdk.Decoder.load(exported[0], backend="pytorch").runtime.model
    misaligned = [k for k, v in model.state_dict().items() if v.data_ptr() % 64]
    assert not misaligned, misaligned[:5]  # else CPU sums round differently from the reference (checkpoints._aligned)


# --- one folder for the rest ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tiny_engine_folder):
    return tiny_engine_folder


def test_info_lists_the_entries_of_an_engine_folder(folder, capsys):
    from pid_sdk.cli import main

    assert main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "preset:        tiny" in out and "onnx:-:64x64:b1:fp32" in out


def test_manifest_format_is_pinned(folder):
    data = json.loads((folder / "manifest.json").read_text())
    assert set(data) == {"format", "format_version", "preset", "config", "model_sha256", "weights", "entries",
                         "manifest_sha256"}
    assert data["format"] == "pid-sdk-engines" and data["format_version"] == 1
    entry = data["entries"][0]
    assert {"backend", "bucket", "batch", "precision", "files", "sha256", "io", "target", "sm", "trt_version",
            "hardware_compatibility", "stripped", "version_compatible", "source", "attention_dtype",
            "torch_version"} == set(entry)
    assert entry["bucket"] == [64, 64] and set(entry["files"]) == {"text", "adapter", "denoiser"}
    assert all(len(h) == 64 for h in entry["sha256"].values())


def test_every_file_of_an_engine_folder_is_readable_by_others(folder):
    from pid_sdk.checkpoints import current_umask

    files = [p for p in folder.rglob("*") if p.is_file()]  # safetensors and mkstemp alone would write 0600
    assert {"manifest.json", "weights.safetensors"} <= {p.name for p in files}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o666 & ~current_umask())
                                                                      for p in files}


@pytest.mark.parametrize("damage", ["missing", "truncated", "modified"])
def test_damaged_graph_files_are_refused(folder, tmp_path, damage):
    f = copy(folder, tmp_path)
    path = f / read_engine_manifest(f).entries[0].files["denoiser"]
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 1
        path.write_bytes(bytes(data))
    dec = pid_sdk.Decoder.load(f, backend="onnxruntime")
    with pytest.raises(CheckpointError, match="missing" if damage == "missing" else "sha256"):
        dec.decode(torch.randn(1, 16, 2, 2))


def test_a_size_without_engine_names_the_export_command(folder):
    dec = pid_sdk.Decoder.load(folder, backend="onnxruntime")
    with pytest.raises(ConfigError) as err:  # no bucket fits inside 32x64 either (the windowed way out)
        dec.decode(torch.randn(1, 16, 1, 2))
    assert "pid-sdk export" in str(err.value) and "32x64" in str(err.value)


def test_text_of_another_length_is_refused_by_static_graphs(folder):
    dec = pid_sdk.Decoder.load(folder, backend="onnxruntime")
    with pytest.raises(PiDError, match="static shape"):
        dec.decode(torch.randn(1, 16, 2, 2), text_embeddings=torch.randn(1, 5, 32))


def test_exporting_another_model_into_the_folder_is_refused(folder, tmp_path):
    f = copy(folder, tmp_path)
    with pytest.raises(CheckpointError, match="another model"):
        export_engine_set(f, preset="tiny-pid-2kto4k-v1.5", sizes=[Bucket(64, 64)], log=lambda *_: None)


def test_exporting_other_weights_of_the_same_model_is_refused(folder, tmp_path):
    """One folder, one set of weights: its graphs, plans and model_sha256 all describe them."""
    f = copy(folder, tmp_path)
    before = (f / "manifest.json").read_text()
    with pytest.raises(CheckpointError, match="other weights") as err:
        export_engine_set(f, preset="tiny", seed=1, sizes=[Bucket(64, 96)], log=lambda *_: None)
    assert "into a new folder" in err.value.fix and "tensors differ" in str(err.value.received)
    assert (f / "manifest.json").read_text() == before and not list(f.glob(".*export*"))
    export_engine_set(f, preset="tiny", seed=0, sizes=[Bucket(64, 96)], log=lambda *_: None)  # the same weights
    assert {e.bucket for e in read_engine_manifest(f).entries} == {(64, 64), (64, 96)}


def test_attention_variants_of_one_size_are_entries_of_their_own(folder, tmp_path):
    f = copy(folder, tmp_path)
    export_engine_set(f, sizes=[Bucket(64, 64)], attention_dtype="fp16", log=lambda *_: None)
    entries = read_engine_manifest(f).entries
    assert sorted(e.key for e in entries) == ["onnx:-:64x64:b1:fp32", "onnx:-:64x64:b1:fp32-attn-fp16"]
    assert len({e.files["denoiser"] for e in entries}) == 2 and all((f / e.files["denoiser"]).is_file()
                                                                    for e in entries)
    chosen = select_entry(read_engine_manifest(f), str(f), "onnxruntime", (64, 64), 1, DeviceInfo(None))
    assert chosen.attention_dtype is None
    from pid_sdk.compare import compare_folder

    judged = {r.entry: r.report.image.row for r in compare_folder(f, "onnxruntime", steps=1)}
    assert judged == {"onnx:-:64x64:b1:fp32": "fp32", "onnx:-:64x64:b1:fp32-attn-fp16": "fp16"}


def test_auto_falls_back_with_a_reason(folder, matrix):
    with pytest.warns(UserWarning, match="Falling back to onnxruntime: tensorrt: TensorRT engines need a CUDA GPU"):
        dec = pid_sdk.Decoder.load(matrix[0], device_info=DeviceInfo(None))  # TensorRT plans, no GPU here
    assert dec.backend_name == "onnxruntime"
    with pytest.raises(ConfigError, match="no TensorRT engines"):
        pid_sdk.Decoder.load(folder, backend="tensorrt")
    with pytest.raises(ConfigError, match="Unknown backend"):
        pid_sdk.Decoder.load(folder, backend="openvino")


# --- selection on simulated GPUs ------------------------------------------------------------------------------
def engine(target, sm, version, bucket=(2048, 2048), precision="bf16", backend="tensorrt", **kw):
    return Entry(backend, bucket, 1, precision, {}, {}, {}, target=target, sm=sm, trt_version=version, **kw)


H100 = DeviceInfo(90, tensorrt="10.13.0.35", name="H100")
RTX5090 = DeviceInfo(120, tensorrt_rtx="1.7.1.116", name="RTX 5090")
GB200 = DeviceInfo(100, tensorrt="10.13.0.35", name="GB200")


@pytest.fixture()
def matrix(folder, tmp_path):
    f = copy(folder, tmp_path)
    m = read_engine_manifest(f)
    for e in [engine("h100", (90,), "10.13.0.35"), engine("h100", (90,), "10.13.0.35", precision="fp8"),
              engine("gb200", (100,), "10.13.0.35"),
              engine("rtx5090", (120,), "1.7.1.116", backend="tensorrt_rtx")]:
        plans = {g: f"{e.target}/2048x2048-b1-{e.precision}/{g}.plan" for g in ("text", "adapter", "denoiser")}
        m.add(replace(e, files=plans, io=m.entries[0].io))  # simulated plans: recorded, never opened here
    write_manifest(f, m)
    return f, read_engine_manifest(f)


def test_selection_picks_the_gpus_engine_preferring_fp8(matrix):
    f, m = matrix
    assert select_entry(m, str(f), "tensorrt", (2048, 2048), 1, H100).key == "tensorrt:h100:2048x2048:b1:fp8"
    assert select_entry(m, str(f), "tensorrt", (2048, 2048), 1, GB200).target == "gb200"
    assert select_entry(m, str(f), "tensorrt", (2048, 2048), 1, RTX5090).backend == "tensorrt_rtx"


@pytest.mark.parametrize("device,reason", [
    (DeviceInfo(90, tensorrt="10.14.1.0"), "built with tensorrt 10.13.0.35, installed 10.14.1.0"),
    (DeviceInfo(89, tensorrt="10.13.0.35"), "this GPU is sm 89"),
    (DeviceInfo(None), "no CUDA GPU"),
    (DeviceInfo(90), "tensorrt is not installed"),
])
def test_selection_explains_what_it_wanted(matrix, device, reason):
    f, m = matrix
    with pytest.raises(ConfigError) as err:
        select_entry(m, str(f), "tensorrt", (2048, 2048), 1, device)
    assert reason in str(err.value) and "pid-sdk build" in str(err.value)


def test_no_engine_for_the_bucket_gives_the_build_command(matrix):
    f, m = matrix
    with pytest.raises(ConfigError) as err:
        select_entry(m, str(f), "tensorrt", (1536, 2688), 1, H100)
    assert "--target h100 --size 1536x2688" in str(err.value)


def test_version_compatible_and_hardware_compatible_plans():
    e = engine("h100", (90,), "10.13.0.35", version_compatible=True)
    assert runs_on(e, DeviceInfo(90, tensorrt="10.14.0"))[0] and not runs_on(e, DeviceInfo(90, tensorrt="10.12.0"))[0]
    assert runs_on(e, DeviceInfo(90, tensorrt="11.0.0"))[0]  # documented: TensorRT 10 plans on a TensorRT 11 runtime
    assert not runs_on(e, DeviceInfo(90, tensorrt="12.0.0"))[0]  # no other pair across majors is
    assert not runs_on(replace(e, version_compatible=False), DeviceInfo(90, tensorrt="10.14.0"))[0]
    amp = engine("any", (80,), "10.13.0.35", hardware_compatibility="ampere_plus")
    assert runs_on(amp, DeviceInfo(120, tensorrt="10.13.0.35"))[0]
    assert not runs_on(amp, DeviceInfo(75, tensorrt="10.13.0.35"))[0]


def test_auto_chooses_tensorrt_first_where_the_device_has_a_plan(matrix):
    """Selection only (no GPU here runs a plan): on an H100 with TensorRT, auto opens TensorRT without a fallback
    warning, and the entry it would run for 2048x2048 is the h100 fp8 plan."""
    f, m = matrix
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dec = pid_sdk.Decoder.load(f, device_info=H100)
    assert dec.backend_name == "tensorrt"
    assert dec.runtime.active.entry_for(2048, 2048, 1).key == "tensorrt:h100:2048x2048:b1:fp8"


def test_compare_reports_the_tolerance_that_would_pass():
    ref = torch.linspace(-1, 1, 1000)
    out = ref.clone()
    out[0] += 0.5
    c = compare("x", out, ref, "fp32")
    assert not c.passed and c.needed.max_abs == pytest.approx(0.5) and "FAIL" in str(c)
    assert compare("x", ref + 1e-6, ref, "fp32").passed
    assert set(TOLERANCES) == {"fp32", "fp16", "bf16", "bf16-twin", "fp8"}


def test_external_weights_are_hashed_and_checked(tmp_path, monkeypatch):
    import export.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)  # what a 1.3B model gets: weights beside the graph
    export_engine_set(tmp_path, preset="tiny", sizes=[Bucket(64, 64)], log=lambda *_: None)
    entry = read_engine_manifest(tmp_path).entries[0]
    data = [rel for rel in entry.sha256 if rel.endswith(".onnx.data")]
    assert len(data) == 3
    ort = pid_sdk.Decoder.load(tmp_path, backend="onnxruntime")
    z = torch.randn(1, 16, 2, 2)
    torch.testing.assert_close(ort.decode(z, seed=0), pid_sdk.Decoder.load(preset="tiny").decode(z, seed=0),
                               rtol=0, atol=1e-4)
    path = tmp_path / data[0]
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(CheckpointError, match=".onnx.data of"):
        pid_sdk.Decoder.load(tmp_path, backend="onnxruntime").decode(z)


def test_the_estimate_of_the_time_left_is_the_mean_time_so_far_times_the_units_left(monkeypatch):
    import export.export_folder as ef

    clock = iter([100.0, 130.0, 220.0, 300.0])  # started; then three units end after 30 s, 90 s and 80 s
    monkeypatch.setattr(ef.time, "perf_counter", lambda: next(clock))
    progress = ef.Progress(3, "graph set")
    assert progress.done("a") == "graph set 1 of 3 (a) in 30 s; about 60 s left"
    assert progress.done("b") == "graph set 2 of 3 (b) in 90 s; about 60 s left"
    assert progress.done("c") == "graph set 3 of 3 (c) in 80 s"
    clock = iter([0.0, 100.0])
    assert ef.Progress(40, "graph set").done("d") == "graph set 1 of 40 (d) in 100 s; about 65 min left"
