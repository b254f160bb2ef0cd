"""The engine path tells the truth: per-entry parity, what each provider can run, confined and hashed files,
selection rules on simulated GPUs, fallback with reasons, and the TensorRT runtime's CPU-side logic."""

import json
import os
import shutil
import warnings
import weakref

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import pid_sdk  # noqa: E402
from export.export_folder import export_engine_set  # noqa: E402
from pid_sdk.buckets import Bucket  # noqa: E402
from pid_sdk.checkpoints import sha256_file  # noqa: E402
from pid_sdk.cli import main  # noqa: E402
from pid_sdk.compare import compare_folder  # noqa: E402
from pid_sdk.errors import CheckpointError, ConfigError  # noqa: E402
from pid_sdk.runtime.manifest import Entry, read_engine_manifest  # noqa: E402
from pid_sdk.runtime.selection import DeviceInfo, covers, runs_on, select_entry, version_runs  # noqa: E402
from conftest import copy_folder as copy  # noqa: E402


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """One size, four precisions: what a user's folder looks like."""
    pytest.importorskip("modelopt")
    folder = tmp_path_factory.mktemp("mixed")
    export_engine_set(folder, preset="tiny", sizes=[Bucket(64, 64)], precisions=["fp32", "fp8-fp32", "bf16", "fp16"],
                      log=lambda *_: None)
    return folder


@pytest.fixture(scope="module")
def plain(tiny_engine_folder):
    return tiny_engine_folder


def edit_manifest(folder, change) -> None:
    """Edit the manifest and give it the right digest again (conftest.sealed): the checks behind it are tested."""
    from conftest import sealed

    data = json.loads((folder / "manifest.json").read_text())
    change(data)
    (folder / "manifest.json").write_text(json.dumps(sealed(data)))


# --- 1, 2: compare runs each entry on its own graph ------------------------------------------------------------
def test_compare_runs_each_entry_on_its_own_graph(mixed):
    results = {r.entry.split(":")[-1]: r for r in compare_folder(mixed, "onnxruntime")}
    manifest = {e.precision: e for e in read_engine_manifest(mixed).entries}
    assert set(results) == {"fp32", "fp8-fp32", "bf16", "fp16"}
    for precision, r in results.items():
        assert r.ran["files"] == sorted(manifest[precision].files.values()), precision
        assert r.ran["provider"] == "CPUExecutionProvider" and r.status == "passed", str(r)
    # each ran its own graph: the errors are its precision's, not fp32's
    image = {p: r.report.image.max_abs for p, r in results.items()}
    assert image["fp32"] < 1e-3 < image["fp8-fp32"] and image["fp32"] < image["fp16"] < image["fp8-fp32"]
    assert "fp32 twin" in results["bf16"].ran["precision"] and results["bf16"].report.image.precision == "bf16-twin"
    assert 1e-5 < results["bf16"].report.image.max_abs  # bf16-rounded weights, not the fp32 graph


def test_compare_cli_prints_a_block_per_entry_and_the_summary(mixed, capsys):
    assert main(["compare", str(mixed), "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("== onnx:-:64x64:b1:") == 4 and out.count("   ran: onnxruntime on CPUExecutionProvider") == 4
    assert out.strip().splitlines()[-1] == "4 passed, 0 failed, 0 skipped"


def test_compare_of_tensorrt_entries_on_a_cpu_skips_them_with_the_reason(mixed, tmp_path, capsys):
    f = copy(mixed, tmp_path)
    edit_manifest(f, lambda d: d["entries"].append({**d["entries"][0], "backend": "tensorrt", "target": "h100",
                                                    "sm": [90], "trt_version": "10.14.1"}))
    results = compare_folder(f, "tensorrt", device_info=DeviceInfo(None))
    assert [(r.status, r.reason) for r in results] == [("skipped", "no CUDA GPU")]
    assert main(["compare", str(f), "--backend", "tensorrt"]) == 1  # nothing ran: not a pass
    assert "0 passed, 0 failed, 1 skipped" in capsys.readouterr().out


def test_onnxruntime_on_a_cpu_refuses_bf16_graphs_with_the_reason(mixed, tmp_path):
    f = copy(mixed, tmp_path)
    edit_manifest(f, lambda d: d.update(entries=[e for e in d["entries"] if e["precision"] == "bf16"]))
    dec = pid_sdk.Decoder.load(f, backend="onnxruntime")
    with pytest.raises(ConfigError) as err:
        dec.decode(torch.randn(1, 16, 2, 2))
    assert "CPUExecutionProvider has no bf16 kernels" in str(err.value) and "--precision fp32" in str(err.value)
    m = read_engine_manifest(mixed)
    assert select_entry(m, str(mixed), "onnxruntime", (64, 64), 1, DeviceInfo(None)).precision == "fp32"
    gpu = select_entry(m, str(mixed), "onnxruntime", (64, 64), 1, DeviceInfo(None), "TensorrtExecutionProvider")
    assert gpu.precision == "fp32"


# --- 3: every path stays inside the folder ----------------------------------------------------------------------
@pytest.mark.parametrize("where,value", [
    ("weights", "../outside.safetensors"), ("weights", "/etc/hostname"),
    ("file", "../../etc/hostname"), ("file", "/etc/hostname"), ("sha256", "onnx/../../secret"),
])
def test_manifest_paths_outside_the_folder_are_refused_before_opening(plain, tmp_path, where, value):
    f = copy(plain, tmp_path)

    def change(d):
        e = d["entries"][0]
        if where == "weights":
            d["weights"] = value
        elif where == "file":
            e["sha256"][value] = e["sha256"].pop(e["files"]["denoiser"])
            e["files"]["denoiser"] = value
        else:
            e["sha256"][value] = "0" * 64

    edit_manifest(f, change)
    with pytest.raises(CheckpointError, match="outside its folder") as err:
        pid_sdk.Decoder.load(f, backend="onnxruntime")
    assert "fix:" in str(err.value)


def test_a_symlink_leading_out_of_the_folder_is_refused(plain, tmp_path):
    f = copy(plain, tmp_path)
    outside = tmp_path / "foreign.safetensors"
    shutil.copy(f / "weights.safetensors", outside)
    (f / "weights.safetensors").unlink()
    os.symlink(outside, f / "weights.safetensors")
    with pytest.raises(CheckpointError, match="outside its folder"):
        pid_sdk.Decoder.load(f, backend="pytorch")


def test_a_graph_cannot_read_external_weights_the_manifest_does_not_list(plain, tmp_path):
    import onnx

    f = copy(plain, tmp_path)
    entry = read_engine_manifest(f).entries[0]
    rel = entry.files["text"]
    onnx.save(onnx.load(str(f / rel)), str(f / rel), save_as_external_data=True, location="text.onnx.data",
              size_threshold=0)
    model = onnx.load(str(f / rel), load_external_data=False)
    for tensor in model.graph.initializer:  # what a hostile graph holds: onnx.save itself refuses to write it
        for kv in tensor.external_data:
            kv.value = "../../weights.safetensors" if kv.key == "location" else kv.value
    (f / rel).write_bytes(model.SerializeToString())
    edit_manifest(f, lambda d: d["entries"][0]["sha256"].update({rel: sha256_file(f / rel)}))
    dec = pid_sdk.Decoder.load(f, backend="onnxruntime")
    with pytest.raises(CheckpointError, match="reads weights from a file its manifest does not list"):
        dec.decode(torch.randn(1, 16, 2, 2))


# --- 4: every file loaded is verified ---------------------------------------------------------------------------
def test_tampered_shared_weights_are_refused_by_the_fallback_and_compare(plain, tmp_path):
    from safetensors.torch import load_file, save_file

    f = copy(plain, tmp_path)
    tensors = load_file(str(f / "weights.safetensors"))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1
    save_file(tensors, str(f / "weights.safetensors"))
    with pytest.raises(CheckpointError, match="does not match the manifest's sha256"):
        pid_sdk.Decoder.load(f, backend="pytorch")
    with pytest.raises(CheckpointError, match="shared weights"):
        compare_folder(f)
    assert main(["compare", str(f)]) == 2


def test_a_missing_hash_is_an_error_unless_the_caller_opts_out(plain, tmp_path):
    f = copy(plain, tmp_path)
    edit_manifest(f, lambda d: d.update(model_sha256=None))
    with pytest.raises(CheckpointError, match="no sha256 for weights.safetensors"):
        pid_sdk.Decoder.load(f, backend="pytorch")
    assert pid_sdk.Decoder.load(f, backend="pytorch", verify=False).backend_name == "pytorch"
    edit_manifest(f, lambda d: d["entries"][0]["sha256"].clear())
    with pytest.raises(CheckpointError, match="without a sha256"):
        pid_sdk.Decoder.load(f, backend="onnxruntime").decode(torch.randn(1, 16, 2, 2))
    pid_sdk.Decoder.load(f, backend="onnxruntime", verify=False).decode(torch.randn(1, 16, 2, 2))


def test_an_artefact_without_its_hash_is_refused_unless_the_caller_opts_out(tmp_path):
    out = pid_sdk.save_artefact(pid_sdk.build_model(pid_sdk.get_preset("tiny")), pid_sdk.get_preset("tiny"),
                                tmp_path / "art")
    data = json.loads((out / "manifest.json").read_text())
    data["sha256"] = {}
    from conftest import sealed

    (out / "manifest.json").write_text(json.dumps(sealed(data)))
    with pytest.raises(CheckpointError, match="no sha256 for model.safetensors"):
        pid_sdk.Decoder.load(out)
    assert pid_sdk.Decoder.load(out, verify=False).backend_name == "pytorch"


# --- 5: selection, each rule once, on simulated GPUs ------------------------------------------------------------
def plan(backend="tensorrt", sm=(90,), level="none", version="10.14.1", vc=False):
    return Entry(backend, (64, 64), 1, "bf16", {}, {}, {}, target="x", sm=sm, trt_version=version,
                 hardware_compatibility=level, version_compatible=vc)


@pytest.mark.parametrize("entry,sm,runs", [
    (plan("tensorrt_rtx", (120,), "ampere_plus", "1.7.1"), 90, False),  # an RTX plan never runs on a Hopper GPU
    (plan("tensorrt_rtx", (120,), "ampere_plus", "1.7.1"), 86, False),
    (plan("tensorrt_rtx", (120,), "none", "1.7.1"), 120, True),
    (plan(sm=(90,), level="ampere_plus"), 120, True),
    (plan(sm=(90,), level="ampere_plus"), 75, False),
    (plan(sm=(86,), level="same_compute_capability"), 89, False),  # same compute capability means equal
    (plan(sm=(86,), level="same_compute_capability"), 86, True),
    (plan(sm=(90,)), 100, False),
])
def test_hardware_rules(entry, sm, runs):
    device = DeviceInfo(sm, tensorrt="10.14.1", tensorrt_rtx="1.7.1")
    assert runs_on(entry, device)[0] is runs
    assert covers(entry.backend, entry.sm, entry.hardware_compatibility, sm) is runs


def test_version_rules_are_nvidias_documented_pairs():
    assert version_runs("10.14.1", "10.14.1.48", False) and not version_runs("10.14.1", "10.14.2", False)
    assert version_runs("10.14.1", "10.15.0", True) and not version_runs("10.14.1", "10.13.9", True)
    assert not version_runs("", "10.14.1", True)
    # across major versions only 8 -> 10 and 10 -> 11 (TensorRT 11.4 support matrix), from 8.6 on
    assert version_runs("10.14.1", "11.0.0", True) and version_runs("8.6.1", "10.3.0", True)
    assert not version_runs("10.14.1", "12.0.0", True) and not version_runs("8.6.1", "9.3.0", True)
    assert not version_runs("8.6.1", "11.0.0", True) and not version_runs("8.5.3", "8.6.1", True)
    assert not version_runs("1.7.1", "1.8.0", True, "tensorrt_rtx")  # TensorRT-RTX: one release, always


# --- 8: fallback --------------------------------------------------------------------------------------------------
def test_auto_falls_back_past_a_damaged_entry_with_the_reason(plain, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("checks the reasons given on a machine without a GPU")
    f = copy(plain, tmp_path)
    path = f / read_engine_manifest(f).entries[0].files["denoiser"]
    path.write_bytes(path.read_bytes()[:-10])
    edit_manifest(f, lambda d: d["entries"].append({**d["entries"][0], "backend": "tensorrt", "target": "h100",
                                                    "sm": [90], "trt_version": "10.14.1"}))
    with pytest.warns(UserWarning, match="tensorrt: TensorRT engines need a CUDA GPU. .no CUDA GPU"):
        dec = pid_sdk.Decoder.load(f)
    z = torch.randn(1, 16, 2, 2)
    with pytest.warns(UserWarning, match=r"Falling back to pytorch for a 64x64 decode: onnxruntime: .*sha256"):
        image = dec.decode(z, seed=0)
    assert dec.backend_name == "pytorch"
    torch.testing.assert_close(image, pid_sdk.Decoder.load(f, backend="pytorch").decode(z, seed=0), rtol=0, atol=0)


def test_on_a_cpu_machine_tensorrt_is_not_told_to_build_for_this_gpu(plain, tmp_path):
    f = copy(plain, tmp_path)
    edit_manifest(f, lambda d: d["entries"].append({**d["entries"][0], "backend": "tensorrt", "target": "h100",
                                                    "sm": [90], "trt_version": "10.14.1"}))
    with pytest.raises(ConfigError) as err:
        pid_sdk.Decoder.load(f, backend="tensorrt", device_info=DeviceInfo(None))
    assert "--target <this GPU>" not in str(err.value) and "backend='onnxruntime'" in str(err.value)


def test_auto_without_any_warning_when_the_first_backend_it_has_runs(plain):
    """A folder of ONNX graphs has no TensorRT engines to fall back from: auto opens ONNX Runtime and says nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dec = pid_sdk.Decoder.load(plain)  # backend="auto"
        image = dec.decode(torch.randn(1, 16, 2, 2), seed=0)
    assert dec.backend_name == "onnxruntime" and image.shape == (1, 3, 64, 64)


# --- 6: the TensorRT runtime's logic that needs no GPU ------------------------------------------------------------
def test_the_denoiser_is_captured_once_and_step_one_runs_once():
    from pid_sdk.runtime.tensorrt_backend import CapturePolicy

    calls = []
    policy = CapturePolicy(lambda: calls.append("run"), lambda: (True, ""),
                           lambda: (calls.append("capture"), lambda: calls.append("replay"))[1])
    for _ in range(8):  # two decodes of 4 steps on one entry
        policy()
    assert calls == ["run", "capture"] + ["replay"] * 7
    calls.clear()
    eager = CapturePolicy(lambda: calls.append("run"), lambda: (False, "not capturable"), lambda: 1 / 0)
    for _ in range(4):
        eager()
    assert calls == ["run"] * 4 and eager.reason == "not capturable"


def test_the_arena_grows_to_the_largest_engine_and_recaptures_what_recorded_the_old_block():
    from pid_sdk.runtime.tensorrt_backend import CapturePolicy, DeviceArena

    class Context:  # records where TensorRT would be told its scratch memory lives
        def set_device_memory(self, ptr, size):
            self.memory = (ptr, size)

    calls = []
    first = CapturePolicy(lambda: calls.append("run"), lambda: (True, ""),
                          lambda: (calls.append("capture"), lambda: calls.append("replay"))[1])
    arena = DeviceArena(device="cpu")
    small, large, medium = Context(), Context(), Context()
    arena.attach(small, 100, first.reset)
    first(), first(), first()  # the small entry's denoiser runs, is captured with the 100-byte block, replays
    arena.attach(large, 1000)  # a larger entry opens: the block moves
    arena.attach(medium, 500)  # fits: nothing moves
    assert arena.buffer.numel() == 1000
    assert small.memory == large.memory == medium.memory == (arena.buffer.data_ptr(), 1000)
    first()
    first()
    assert calls == ["run", "capture", "replay", "replay", "run", "capture", "replay"]  # recaptured, not replayed


def conditioning_backend():
    """The TensorRT backend's conditioning swap on CPU tensors (the part of it that needs no GPU)."""
    from pid_sdk.runtime.tensorrt_backend import SHARED, TensorRTBackend, TensorRTStep

    backend = object.__new__(TensorRTBackend)
    backend.tensors, backend._owner = {name: torch.zeros(3) for name in SHARED}, None

    def prepare(value: float) -> TensorRTStep:  # what prepare does after the text and adapter engines ran
        backend._evict()
        for name in SHARED:
            backend.tensors[name].fill_(value)
        step = TensorRTStep(backend)
        backend._owner = weakref.ref(step)
        return step

    return backend, prepare


def test_a_guided_decode_feeds_each_pass_its_own_conditioning():
    """The conditional and unconditional passes of the teacher's guidance share the engines' static buffers: each
    must see its own text and latent tokens at every step, not the last prepared ones."""
    from pid_sdk.runtime.tensorrt_backend import SHARED

    backend, prepare = conditioning_backend()
    cond, uncond = prepare(1.0), prepare(-1.0)
    for _ in range(3):
        for step, value in ((cond, 1.0), (uncond, -1.0)):
            backend.load(step)
            assert all(torch.equal(backend.tensors[n], torch.full((3,), value)) for n in SHARED)


def test_a_finished_decode_costs_no_copy():
    backend, prepare = conditioning_backend()
    first = prepare(1.0)
    backend.load(first)
    del first  # the decode is over: its step object is gone
    second = prepare(2.0)
    assert second.saved is None and backend._owner() is second


def test_io_spec_refuses_graphs_that_disagree_on_a_shared_tensor(plain):
    from dataclasses import replace

    from pid_sdk.runtime.tensorrt_backend import io_spec

    entry = read_engine_manifest(plain).entries[0]
    assert set(io_spec(entry)) == {"text", "text_tokens", "latent", "latent_sigma", "latent_tokens", "gate_offsets",
                                   "x", "sigma", "v"}
    io = json.loads(json.dumps(entry.io))
    io["denoiser"]["inputs"][2]["shape"][1] += 1  # text_tokens
    with pytest.raises(CheckpointError, match="disagree on text_tokens"):
        io_spec(replace(entry, io=io))


# --- 9: tolerances derived from the measured spread ----------------------------------------------------------------
def test_fp32_parity_holds_at_one_step_on_the_default_seed(plain, capsys):
    assert main(["compare", str(plain), "--steps", "1"]) == 0, capsys.readouterr().out


# --- choosing the entry, and seeing which ran -------------------------------------------------------------------
def test_a_precision_decodes_on_its_own_entry_and_the_decoder_says_which_ran(mixed):
    latent = torch.randn(1, 16, 2, 2, generator=torch.Generator().manual_seed(3))
    images = {}
    for precision in ("fp32", "fp8-fp32", "fp16"):
        dec = pid_sdk.Decoder.load(mixed, backend="onnxruntime", precision=precision)
        assert (dec.engine, dec.precision) == (None, precision)
        images[precision] = dec.decode(latent)
        manifest = {e.precision: e for e in read_engine_manifest(mixed).entries}
        assert dec.engine == {"entry": f"onnx:-:64x64:b1:{precision}", "backend": "onnxruntime",
                              "provider": "CPUExecutionProvider", "precision": precision,
                              "files": sorted(manifest[precision].files.values())}
    assert not torch.equal(images["fp32"], images["fp8-fp32"]) and not torch.equal(images["fp32"], images["fp16"])
    default = pid_sdk.Decoder.load(mixed, backend="onnxruntime")
    assert default.precision == "engine"  # nothing chosen, nothing run yet
    assert torch.equal(default.decode(latent), images["fp32"]) and default.precision == "fp32"


def test_a_precision_the_folder_lacks_is_refused_with_the_entries_it_has(mixed):
    with pytest.raises(ConfigError) as e:
        pid_sdk.Decoder.load(mixed, backend="onnxruntime", precision="fp8")
    assert str(e.value) == ("The engine folder has no onnxruntime entry of precision fp8.\n  received: fp8\n"
                            "  expected: onnx:-:64x64:b1:fp32, onnx:-:64x64:b1:fp8-fp32, onnx:-:64x64:b1:bf16, "
                            "onnx:-:64x64:b1:fp16\n"
                            f"  fix: pass one of those precisions, or pid-sdk export {mixed} --precision fp8")
    with pytest.raises(ConfigError, match="The PyTorch fallback runs fp32 or bf16, not fp16"):
        pid_sdk.Decoder.load(mixed, backend="pytorch", precision="fp16")
    assert pid_sdk.Decoder.load(mixed, backend="pytorch", precision="fp32").engine == {
        "entry": None, "backend": "pytorch", "provider": "cpu", "precision": "fp32", "files": []}


def test_the_cli_decodes_the_entry_asked_for_and_prints_what_ran(mixed, tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({"latent": torch.randn(1, 16, 2, 2, generator=torch.Generator().manual_seed(3))},
              str(tmp_path / "z.safetensors"))
    args = ["decode", str(tmp_path / "z.safetensors"), "--model", str(mixed), "--backend", "onnxruntime"]
    assert main([*args, "-o", str(tmp_path / "a.png"), "--precision", "fp8-fp32"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == ("ran: onnx:-:64x64:b1:fp8-fp32 on onnxruntime (CPUExecutionProvider), "
                                    "precision fp8-fp32")
    assert main([*args, "-o", str(tmp_path / "b.png"), "--quiet"]) == 0
    assert "ran:" not in capsys.readouterr().out
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()  # fp8-fp32 and fp32 entries
