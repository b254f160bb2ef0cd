"""The C ABI (bindings/): built with bindings/build.sh, run on the demo model's AOTInductor export, through the C sample
and through ctypes. Images are compared with the Python decoder's; every error path returns a code and a message."""

import ctypes
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import pid_sdk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bindings"))
import ctypes_abi  # noqa: E402
from ctypes_abi import CHECKPOINT, CONFIG, INPUT, OK, Handle  # noqa: E402

BUILD = ROOT / "bindings" / "build"
SAMPLE = ROOT / "samples" / "sample_latent_flux1.safetensors"


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:
    """libpid_sdk.so as the sources stand: bindings/build.sh runs every time (an incremental build: a library
    older than a source is never the one tested)."""
    run = subprocess.run(["bash", str(ROOT / "bindings" / "build.sh")], capture_output=True, text=True)
    if "the build needs" in run.stderr:
        pytest.skip(f"the bindings cannot be built here: {run.stderr.strip()}")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lib = ctypes_abi.load(BUILD / "libpid_sdk.so")
    assert lib.pid_abi_version() == 3  # 2: windowed decoding; 3: pid_decode_windowed_blend
    return lib


@pytest.fixture(scope="module")
def aoti_folder(tmp_path_factory) -> Path:
    """The demo model exported as AOTInductor packages for the CPU at 512x512 (the sample latent's size)."""
    from export.export_folder import export_engine_set
    from pid_sdk.buckets import Bucket

    folder = tmp_path_factory.mktemp("aoti") / "demo"
    export_engine_set(folder, model=pid_sdk.DEMO_MODEL, sizes=[Bucket(512, 512)], format="aoti", log=lambda *_: None)
    return folder


def sample_latent() -> np.ndarray:
    from safetensors.numpy import load_file

    return load_file(SAMPLE)["latent"][None].astype(np.float32)


def error(lib) -> str:
    return ctypes_abi.last_error(lib)


# --- the C sample and the Python decoder agree ------------------------------------------------------------------
def test_c_sample_decodes_the_sample_latent_like_the_python_decoder(lib, aoti_folder, tmp_path):
    """The C sample's PNG against the Python decoder's image (PyTorch backend, eager fp32, the same seed): the
    seeded noise is the same draw, so they differ only by AOTInductor's kernels, at most 2 of 255 on a few values
    (measured: 1 level on 19 of 786,432 values)."""
    from PIL import Image

    out = tmp_path / "c.png"
    run = subprocess.run([str(BUILD / "pid_decode"), str(aoti_folder), str(SAMPLE), str(out), "--seed", "7"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    c_image = np.asarray(Image.open(out))
    python = pid_sdk.Decoder.load(pid_sdk.DEMO_MODEL).decode(torch.from_numpy(sample_latent()), seed=7,
                                                             output="numpy")[0]
    diff = np.abs(c_image.astype(int) - python.astype(int))
    assert c_image.shape == python.shape == (512, 512, 3)
    assert diff.max() <= 2 and diff.mean() <= 1e-3, (diff.max(), diff.mean())
    other_seed = pid_sdk.Decoder.load(pid_sdk.DEMO_MODEL).decode(torch.from_numpy(sample_latent()), seed=8,
                                                                 output="numpy")[0]
    assert np.abs(c_image.astype(int) - other_seed.astype(int)).mean() > 1  # the seed matters: noise is compared


def test_the_abi_equals_the_python_aoti_backend_exactly(lib, aoti_folder):
    c_image, python = c_and_python_images(lib, aoti_folder, b"cpu")
    np.testing.assert_array_equal(c_image, python)


def c_and_python_images(lib, folder, device: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The sample latent decoded with seed 3 by the C ABI and by Python's aoti backend, on `device`."""
    handle = Handle(lib, folder, device)
    assert handle.status == OK, error(lib)
    status, image = handle.decode(sample_latent(), seed=3)
    handle.close()
    assert status == OK, error(lib)
    python = pid_sdk.Decoder.load(folder, backend="aoti")
    assert python.device.type == device.decode()
    return image, python.decode(torch.from_numpy(sample_latent()), seed=3, output="numpy")


def test_a_windowed_decode_through_the_abi_equals_pythons_exactly(lib, aoti_folder, tmp_path):
    """A 1024x512 output from a folder of 512x512 only: three windows of 512x512 sharing 128 rows, in C and in
    Python's aoti backend, byte for byte; auto picks the same window, the C sample writes the same image."""
    from PIL import Image

    z = np.random.default_rng(5).standard_normal((1, 16, 32, 16)).astype(np.float32)
    handle = Handle(lib, aoti_folder)
    status, c_image = handle.decode(z, seed=3, window=(512, 512))
    assert status == OK, error(lib)
    python = pid_sdk.Decoder.load(aoti_folder, backend="aoti")
    assert c_image.shape == (1, 1024, 512, 3)
    np.testing.assert_array_equal(c_image, python.decode(torch.from_numpy(z), seed=3, window=(512, 512),
                                                         output="numpy"))
    assert handle.decode(z, seed=3, window=(0, 0), overlap=128)[1].tobytes() == c_image.tobytes()
    other = handle.decode(z, seed=3, window=(512, 512), overlap=64)[1]
    np.testing.assert_array_equal(other, python.decode(torch.from_numpy(z), seed=3, window=(512, 512), overlap=64,
                                                       output="numpy"))
    assert np.abs(other.astype(int) - c_image.astype(int)).max() > 0  # the overlap is heard
    whole = handle.decode(sample_latent(), seed=3)[1]  # a window covering the output is the whole-image decode
    assert handle.decode(sample_latent(), seed=3, window=(512, 512))[1].tobytes() == whole.tobytes()
    handle.close()
    from safetensors.numpy import save_file

    save_file({"latent": z[0]}, str(tmp_path / "z.safetensors"))
    run = subprocess.run([str(BUILD / "pid_decode"), str(aoti_folder), str(tmp_path / "z.safetensors"),
                          str(tmp_path / "w.png"), "--seed", "3", "--window", "auto"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert np.asarray(Image.open(tmp_path / "w.png")).tobytes() == c_image[0].tobytes()


def test_every_blend_through_the_abi_equals_pythons_exactly(lib, aoti_folder):
    """pid_decode_windowed_blend: the cosine and flat ramps byte for byte as Python's blend=; linear as
    pid_decode_windowed; an unknown blend is an INPUT error naming the three."""
    z = np.random.default_rng(6).standard_normal((1, 16, 16, 24)).astype(np.float32)
    handle = Handle(lib, aoti_folder)
    python = pid_sdk.Decoder.load(aoti_folder, backend="aoti")
    images = {}
    for blend in ("cosine", "flat"):
        status, images[blend] = handle.decode(z, seed=1, window=(512, 512), blend=blend.encode())
        assert status == OK, error(lib)
        np.testing.assert_array_equal(images[blend], python.decode(torch.from_numpy(z), seed=1, window=(512, 512),
                                                                   blend=blend, output="numpy"))
    linear = handle.decode(z, seed=1, window=(512, 512))[1]
    assert handle.decode(z, seed=1, window=(512, 512), blend=b"linear")[1].tobytes() == linear.tobytes()
    assert len({images["cosine"].tobytes(), images["flat"].tobytes(), linear.tobytes()}) == 3  # the blend is heard
    assert handle.decode(z, seed=1, window=(512, 512), blend=b"gaussian")[0] == INPUT
    assert "Unknown blend." in error(lib) and "linear, cosine or flat" in error(lib)
    handle.close()


@pytest.mark.parametrize("shape,window,overlap,message", [
    ((1, 16, 32, 16), (500, 512), -1, "whole latent cells"),
    ((1, 16, 32, 16), (512, 512), 512, "The overlap takes output pixels"),
    ((1, 16, 32, 16), (512, 512), 48, "The overlap takes output pixels"),
    ((1, 16, 8, 8), (0, 0), -1, "No entry of"),
    ((1, 16, 32, 16), (256, 256), -1, "No graph set of this engine folder takes a latent of this shape"),
    ((1, 1, 1 << 27, 1), (512, 512), -1, "more output than one call may write"),  # before any window is planned
])
def test_bad_windows_through_the_abi_are_input_errors(lib, aoti_folder, shape, window, overlap, message):
    handle = Handle(lib, aoti_folder)
    status, image = handle.decode(np.zeros((1, 16, 32, 16), np.float32), shape=shape, out_bytes=3 << 20,
                                  window=window, overlap=overlap)  # the shape the ABI is told
    handle.close()
    assert status == INPUT and image is None and message in error(lib), error(lib)
    assert "fix:" in error(lib)


@pytest.mark.gpu
def test_on_cuda_the_abi_draws_the_noise_python_draws(lib, tmp_path):
    """One noise rule on every device: on CUDA both draw with the GPU's own generator seeded with the seed, so the
    C ABI and Python's aoti backend give the same image (on the CPU: the test above)."""
    from export.export_folder import export_engine_set
    from pid_sdk.buckets import Bucket

    folder = tmp_path / "cuda"
    export_engine_set(folder, model=pid_sdk.DEMO_MODEL, sizes=[Bucket(512, 512)], format="aoti", device="cuda",
                      log=lambda *_: None)
    c_image, python = c_and_python_images(lib, folder, b"cuda")
    np.testing.assert_array_equal(c_image, python)


def test_a_partially_denoised_capture_decodes_as_in_python(lib, aoti_folder):
    handle = Handle(lib, aoti_folder)
    status, image = handle.decode(sample_latent(), sigma=0.3, seed=1)
    handle.close()
    assert status == OK, error(lib)
    python = pid_sdk.Decoder.load(aoti_folder, backend="aoti").decode(torch.from_numpy(sample_latent()), seed=1,
                                                                      latent_sigma=0.3, output="numpy")
    np.testing.assert_array_equal(image, python)


def test_read_latent_returns_the_file_shape_and_values(lib):
    shape = (ctypes.c_int64 * 4)()
    assert lib.pid_read_latent(str(SAMPLE).encode(), None, 0, shape) == OK
    assert list(shape) == [1, 16, 16, 16]
    data = np.zeros(16 * 16 * 16, np.float32)
    assert lib.pid_read_latent(str(SAMPLE).encode(), data.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), 100,
                               shape) == INPUT
    assert "too small" in error(lib)
    assert lib.pid_read_latent(str(SAMPLE).encode(), data.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), data.size,
                               shape) == OK
    np.testing.assert_array_equal(data.reshape(1, 16, 16, 16), sample_latent())


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"\x10\x00\x00\x00\x00\x00\x00\x00{bad"])
def test_read_latent_refuses_what_is_not_a_latent_file(lib, tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    shape = (ctypes.c_int64 * 4)()
    assert lib.pid_read_latent(str(path).encode(), None, 0, shape) == INPUT
    assert "fix:" in error(lib)


def test_read_latent_refuses_a_truncated_file(lib, tmp_path):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(SAMPLE.read_bytes()[:-100])
    shape = (ctypes.c_int64 * 4)()
    assert lib.pid_read_latent(str(path).encode(), None, 0, shape) == INPUT
    assert "truncated" in error(lib)


# --- error paths: a code and the message a PiDError would carry, never a crash ----------------------------------
def test_open_errors(lib, aoti_folder, tmp_path):
    ptr = ctypes.c_void_p()
    assert lib.pid_open(str(tmp_path / "nowhere").encode(), b"cpu", ctypes.byref(ptr)) == CHECKPOINT
    assert "no engine manifest" in error(lib) and "fix:" in error(lib) and not ptr.value
    assert lib.pid_open(None, b"cpu", ctypes.byref(ptr)) == INPUT and "folder is NULL" in error(lib)
    assert lib.pid_open(str(aoti_folder).encode(), b"cpu", None) == INPUT
    assert lib.pid_open(str(aoti_folder).encode(), b"tpu", ctypes.byref(ptr)) == CONFIG
    assert "Unknown device" in error(lib)
    if not torch.cuda.is_available():
        assert lib.pid_open(str(aoti_folder).encode(), b"cuda", ctypes.byref(ptr)) == CONFIG
    handle = Handle(lib, aoti_folder, device=None)  # NULL device: the CPU
    assert handle.status == OK and error(lib) == ""
    handle.close()
    lib.pid_close(None)


def edited_copy(folder: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest, copy)
    (copy / "manifest.json").write_text(json.dumps(manifest))  # the C runtime judges the content, not a digest
    return copy


def test_a_tampered_package_is_refused_before_it_is_loaded(lib, aoti_folder, tmp_path):
    def tamper(manifest, copy):
        package = copy / manifest["entries"][0]["files"]["denoiser"]
        data = bytearray(package.read_bytes())
        data[len(data) // 2] ^= 0xFF
        package.write_bytes(bytes(data))

    handle = Handle(lib, edited_copy(aoti_folder, tmp_path, tamper))
    assert handle.status == OK, error(lib)  # packages are hashed when first used
    status, _ = handle.decode(sample_latent())
    assert status == CHECKPOINT and "does not match the manifest's sha256" in error(lib)
    handle.close()


@pytest.mark.parametrize("edit, code, message", [
    (lambda m, c: m["entries"][0]["files"].update(denoiser="../../etc/passwd"), CHECKPOINT, "outside its folder"),
    (lambda m, c: m["entries"][0].update(torch_version="2.99.0"), CONFIG, "compiled by torch 2.99.0"),
    (lambda m, c: m["entries"][0].update(target="cuda"), CONFIG, "compiled for cuda"),
    (lambda m, c: m.update(entries=[]), CONFIG, "has no AOTInductor packages"),
    (lambda m, c: m.update(format="something-else"), CHECKPOINT, "not a pid-sdk engine manifest"),
    (lambda m, c: m["entries"][0].pop("io"), CHECKPOINT, "is damaged"),
])
def test_a_bad_manifest_is_refused_at_open(lib, aoti_folder, tmp_path, edit, code, message):
    handle = Handle(lib, edited_copy(aoti_folder, tmp_path, edit))
    assert handle.status == code and message in error(lib), error(lib)


def test_a_missing_package_is_refused(lib, aoti_folder, tmp_path):
    copy = edited_copy(aoti_folder, tmp_path, lambda m, c: (c / m["entries"][0]["files"]["adapter"]).unlink())
    handle = Handle(lib, copy)
    status, _ = handle.decode(sample_latent())
    assert status == CHECKPOINT and "is missing" in error(lib)
    handle.close()


def test_bad_input_through_the_abi(lib, aoti_folder):
    handle = Handle(lib, aoti_folder)
    z = sample_latent()
    cases = [
        (dict(latent=z[:, :, :8]), "No graph set of this engine folder takes a latent of this shape"),
        (dict(latent=z, shape=(1, 16, 16, 0)), "The latent shape is wrong"),
        (dict(latent=z, space=b"nonsense"), "Unknown latent space 'nonsense'"),
        (dict(latent=z, space=b"sd3"), "This engine folder decodes flux1 latents"),
        (dict(latent=np.where(np.arange(z.size).reshape(z.shape) == 5, np.nan, z)), "NaN or Inf"),
        (dict(latent=z * 1e6), "values no LDM produces"),
        (dict(latent=z, sigma=-0.5), "latent_sigma is out of range"),
        (dict(latent=z, sigma=float("nan")), "latent_sigma is out of range"),
        (dict(latent=z, seed=-1), "seed must be >= 0"),
        (dict(latent=z, out_bytes=100), "The output buffer is too small"),
    ]
    for kwargs, message in cases:
        status, _ = handle.decode(kwargs.pop("latent"), **kwargs)
        assert status == INPUT and message in error(lib) and "fix:" in error(lib), (message, error(lib))
    status, _ = handle.decode(z, space=None)  # NULL: the model's own space
    assert status == OK and error(lib) == ""
    handle.close()


def test_null_pointers_return_an_error(lib, aoti_folder):
    handle = Handle(lib, aoti_folder)
    z = sample_latent()
    shape = (ctypes.c_int64 * 4)(*z.shape)
    out = np.zeros(512 * 512 * 3, np.uint8)
    out_p = out.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
    z_p = z.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    assert lib.pid_decode(None, z_p, shape, None, 0.0, 0, out_p, out.size) == INPUT
    assert lib.pid_decode(handle.ptr, None, shape, None, 0.0, 0, out_p, out.size) == INPUT
    assert lib.pid_decode(handle.ptr, z_p, None, None, 0.0, 0, out_p, out.size) == INPUT
    assert lib.pid_decode(handle.ptr, z_p, shape, None, 0.0, 0, None, out.size) == INPUT
    assert "out_rgb8 is NULL" in error(lib)
    assert lib.pid_output_size(handle.ptr, shape, None) == INPUT
    window = (ctypes.c_int64 * 2)(512, 512)
    assert lib.pid_decode_windowed(None, z_p, shape, None, 0.0, 0, window, -1, out_p, out.size) == INPUT
    assert lib.pid_decode_windowed(handle.ptr, None, shape, None, 0.0, 0, window, -1, out_p, out.size) == INPUT
    assert lib.pid_decode_windowed(handle.ptr, z_p, None, None, 0.0, 0, window, -1, out_p, out.size) == INPUT
    assert lib.pid_decode_windowed(handle.ptr, z_p, shape, None, 0.0, 0, None, -1, out_p, out.size) == INPUT
    assert "window_hw is NULL" in error(lib)
    assert lib.pid_decode_windowed(handle.ptr, z_p, shape, None, 0.0, 0, window, -1, None, out.size) == INPUT
    assert lib.pid_windowed_output_size(handle.ptr, None, window) == INPUT
    handle.close()


# --- threads -------------------------------------------------------------------------------------------------------
def test_concurrent_decodes_on_one_handle_and_on_two_handles_equal_the_serial_ones(lib, aoti_folder):
    """One handle serialises its decodes; two handles decode in parallel; pid_last_error is per thread."""
    z = sample_latent()
    shared, second = Handle(lib, aoti_folder), Handle(lib, aoti_folder)
    serial = {seed: shared.decode(z, seed=seed)[1] for seed in (0, 1, 2)}
    results, messages = {}, {}

    def work(handle, seed):
        results[(id(handle), seed)] = handle.decode(z, seed=seed)[1]

    def fail():
        handle = Handle(lib, aoti_folder)
        handle.decode(z, seed=-5)
        messages["failing thread"] = error(lib)
        handle.close()

    threads = [threading.Thread(target=work, args=(h, s)) for h in (shared, second) for s in (0, 1, 2)]
    threads.append(threading.Thread(target=fail))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (_, seed), image in results.items():
        np.testing.assert_array_equal(image, serial[seed])
    assert len(results) == 6 and "seed must be >= 0" in messages["failing thread"]
    assert error(lib) == ""  # this thread's last call succeeded, whatever the others did
    shared.close()
    second.close()


# --- the C sample's own errors --------------------------------------------------------------------------------------
def test_c_sample_reports_errors_and_writes_nothing(lib, aoti_folder, tmp_path):
    out = tmp_path / "never.png"
    for args in ([str(tmp_path / "nowhere"), str(SAMPLE)], [str(aoti_folder), str(tmp_path / "none.safetensors")],
                 [str(aoti_folder), str(SAMPLE), "--latent-space", "sdxl"]):
        run = subprocess.run([str(BUILD / "pid_decode"), args[0], args[1], str(out), *args[2:]], capture_output=True,
                             text=True)
        assert run.returncode == 1 and "error:" in run.stderr and "fix:" in run.stderr, run.stderr
        assert not out.exists() and list(tmp_path.glob("never*")) == []
    for options in (["--seed", "abc"], ["--seed"], ["--colour", "red"]):
        run = subprocess.run([str(BUILD / "pid_decode"), str(aoti_folder), str(SAMPLE), str(out), *options],
                             capture_output=True, text=True)
        assert run.returncode == 2 and "fix:" in run.stderr and not out.exists(), run.stderr


def test_the_c_sample_refuses_to_write_over_its_latent(lib, aoti_folder, tmp_path):
    import shutil

    latent = tmp_path / "z.safetensors"
    shutil.copy(SAMPLE, latent)
    before = latent.read_bytes()
    (tmp_path / "alias.png").symlink_to(latent)
    for out in (latent, tmp_path / "alias.png", tmp_path / "." / "z.safetensors"):
        run = subprocess.run([str(BUILD / "pid_decode"), str(aoti_folder), str(latent), str(out)], capture_output=True,
                             text=True)
        assert run.returncode == 2 and "is the latent file itself" in run.stderr, run.stderr
    assert latent.read_bytes() == before


def test_closed_and_unknown_handles_are_a_status_not_a_crash(lib, aoti_folder):
    handle = Handle(lib, aoti_folder)
    assert handle.status == OK, error(lib)
    ptr = ctypes.c_void_p(handle.ptr.value)
    handle.close()
    lib.pid_close(ptr)  # closed twice: left alone, said
    assert "not open" in error(lib)
    handle.ptr = ptr
    status, _ = handle.decode(sample_latent())
    assert status == INPUT and "closed already" in error(lib)
    made_up = ctypes.c_void_p(12345)
    hw = (ctypes.c_int64 * 2)()
    assert lib.pid_output_size(made_up, (ctypes.c_int64 * 4)(1, 16, 16, 16), hw) == INPUT
    lib.pid_close(made_up)
    assert "not open" in error(lib)


def relabelled(folder: Path, tmp_path: Path, change) -> Path:
    """A copy whose manifest says something else of its packages, every hash and its digest made right again."""
    from conftest import sealed

    copy = tmp_path / "relabelled"
    shutil.copytree(folder, copy)
    data = json.loads((copy / "manifest.json").read_text())
    change(data["entries"][0], copy)
    (copy / "manifest.json").write_text(json.dumps(sealed(data)))
    return copy


def swap_roles(entry, _):
    entry["files"]["text"], entry["files"]["adapter"] = entry["files"]["adapter"], entry["files"]["text"]


def onnx_as_text_package(entry, folder):
    import onnx

    from pid_sdk.checkpoints import sha256_file

    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["text"], ["text_tokens"])], "g",
                                   [onnx.helper.make_tensor_value_info("text", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("text_tokens", onnx.TensorProto.FLOAT, [1])])
    path = folder / entry["files"]["text"]
    onnx.save(onnx.helper.make_model(graph), str(path))
    entry["sha256"][entry["files"]["text"]] = sha256_file(path)


@pytest.mark.parametrize("change,python_says,c_says", [
    (swap_roles, "it takes 2 inputs and gives 2 outputs, a text graph 1 and 1", "is not the text graph"),
    (lambda e, _: e.update(precision="bf16"), "its weights are ['float32'], a bf16 graph's bfloat16",
     "no bfloat16 constants"),
    (onnx_as_text_package, "is not an AOTInductor package", "is not an AOTInductor package"),
])
def test_packages_that_are_not_what_the_manifest_says_are_refused(lib, aoti_folder, tmp_path, capsys, change,
                                                                  python_says, c_says):
    from pid_sdk.cli import main

    folder = relabelled(aoti_folder, tmp_path, change)
    assert main(["verify", str(folder)]) == 2 and python_says in capsys.readouterr().out
    with pytest.raises(pid_sdk.PiDError, match="is not"):
        pid_sdk.Decoder.load(folder, backend="aoti").decode(torch.from_numpy(sample_latent()), seed=0)
    handle = Handle(lib, folder)
    assert handle.status == OK, error(lib)
    status, _ = handle.decode(sample_latent())
    handle.close()
    assert status == CHECKPOINT and c_says in error(lib), error(lib)


# --- the export and its manifest entry -------------------------------------------------------------------------------
def test_the_aoti_entry_records_device_torch_release_and_hashes(aoti_folder):
    from pid_sdk.checkpoints import sha256_file
    from pid_sdk.runtime.manifest import read_engine_manifest

    (entry,) = read_engine_manifest(aoti_folder).entries
    assert (entry.backend, entry.target, entry.bucket, entry.batch, entry.precision) == ("aoti", "cpu", (512, 512), 1,
                                                                                         "fp32")
    assert entry.torch_version == torch.__version__
    assert {entry.sha256[rel] for rel in entry.files.values()} == {sha256_file(aoti_folder / rel)
                                                                   for rel in entry.files.values()}
    assert entry.input_shape("adapter", "latent") == (1, 16, 16, 16)


@pytest.mark.parametrize("options, message", [
    (dict(precisions=["fp8"]), "exported in fp32 or bf16"),
    (dict(attention_dtype="fp16"), "--attention-dtype applies to ONNX graphs"),
    (dict(format="tflite"), "Unknown export format"),
    (dict(format="onnx", device="cuda"), "--device applies to AOTInductor packages"),
])
def test_export_refuses_options_aoti_does_not_take(tmp_path, options, message):
    from export.export_folder import export_engine_set
    from pid_sdk.buckets import Bucket
    from pid_sdk.errors import ConfigError

    options = {"format": "aoti", **options}
    with pytest.raises(ConfigError, match=message):
        export_engine_set(tmp_path / "set", preset="tiny", sizes=[Bucket(64, 64)], log=lambda *_: None, **options)
    assert not (tmp_path / "set").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_cuda_export_needs_a_cuda_host(tmp_path):
    from export.export_folder import export_engine_set
    from pid_sdk.buckets import Bucket
    from pid_sdk.errors import ConfigError

    with pytest.raises(ConfigError, match="compiled on a CUDA host"):
        export_engine_set(tmp_path / "set", preset="tiny", sizes=[Bucket(64, 64)], format="aoti", device="cuda")


def test_selection_follows_device_and_torch_release(aoti_folder):
    from dataclasses import replace

    from pid_sdk.runtime.manifest import read_engine_manifest
    from pid_sdk.runtime.selection import DeviceInfo, aoti_runs_on

    (entry,) = read_engine_manifest(aoti_folder).entries
    cpu, gpu = DeviceInfo(None), DeviceInfo(90)
    assert aoti_runs_on(entry, cpu) == (True, "") and aoti_runs_on(entry, gpu)[0]
    assert not aoti_runs_on(replace(entry, target="cuda"), cpu)[0]
    ok, why = aoti_runs_on(replace(entry, torch_version="2.99.1"), cpu)
    assert not ok and "compiled by torch 2.99.1" in why


def test_backend_aoti_without_an_entry_of_this_size_names_the_export(aoti_folder):
    from pid_sdk.errors import ConfigError

    decoder = pid_sdk.Decoder.load(aoti_folder, backend="aoti")
    with pytest.raises(ConfigError, match="--format aoti"):
        decoder.decode(torch.zeros(1, 16, 8, 8), seed=0)


def test_cpu_packages_on_a_machine_with_a_gpu_decode_on_the_cpu(aoti_folder):
    """A folder with CPU packages only, opened where a GPU is reported: the decode stays on the CPU, where its
    packages run, and gives the same image."""
    from pid_sdk.runtime.selection import DeviceInfo

    z = torch.from_numpy(sample_latent())
    on_gpu_host = pid_sdk.Decoder.load(aoti_folder, backend="aoti", device_info=DeviceInfo(90, name="a GPU"))
    assert on_gpu_host.device.type == "cpu"
    np.testing.assert_array_equal(on_gpu_host.decode(z, seed=2, output="numpy"),
                                  pid_sdk.Decoder.load(aoti_folder, backend="aoti").decode(z, seed=2, output="numpy"))


def test_a_gpu_machine_prefers_cuda_packages_and_a_cpu_machine_cpu_ones(aoti_folder):
    from dataclasses import replace

    from pid_sdk.runtime.manifest import read_engine_manifest
    from pid_sdk.runtime.selection import DeviceInfo, select_entry

    manifest = read_engine_manifest(aoti_folder)
    cpu_entry = manifest.entries[0]
    manifest.add(replace(cpu_entry, target="cuda", precision="bf16"))
    pick = {sm: select_entry(manifest, str(aoti_folder), "aoti", (512, 512), 1, DeviceInfo(sm)).target
            for sm in (None, 90)}
    assert pick == {None: "cpu", 90: "cuda"}


def test_the_embedding_benchmark_times_each_path(lib, aoti_folder, tmp_path, monkeypatch):
    import importlib.util

    out = tmp_path / "rows.json"
    monkeypatch.setattr("sys.argv", ["embedding.py", "--folder", str(aoti_folder), "--repeats", "1", "--out", str(out)])
    spec = importlib.util.spec_from_file_location("embedding_bench", ROOT / "bench" / "embedding.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main()
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 3 and all(r["decode_median_s"] > 0 and r["first_decode_s"] > 0 for r in rows.values())


def test_the_c_runtime_knows_the_latent_spaces_python_knows():
    """bindings/cpp/decoder.cpp restates the table of latent spaces (name, aliases, whether a capture arrives in the
    Euler frame): tied here to pid_sdk.latents.LATENT_SPACES, entry for entry."""
    import re

    from pid_sdk.latents import LATENT_SPACES

    text = (ROOT / "bindings" / "cpp" / "decoder.cpp").read_text()
    table = text[text.index("const std::vector<Space> SPACES = {"):]
    table = table[:table.index("};")]
    rows = re.findall(r'\{"([\w.-]+)", \{([^}]*)\}, (true|false)\}', table)
    cpp = {name: (tuple(re.findall(r'"([\w.-]+)"', aliases)), vp == "true") for name, aliases, vp in rows}
    python = {s.name: (s.aliases, s.noise_form == "vp") for s in LATENT_SPACES.values()}
    assert cpp == python
