"""`pid-sdk verify` (pid_sdk.runtime.integrity): one check for the weights and one per entry, each saying what it
found; plans judged by their header (their library's own check where it is installed). Plans here are headers
made by hand for a library that is absent (full TensorRT), so no build is needed."""

import hashlib
import importlib.util
import json

import pytest

from conftest import copy_folder, sealed
from pid_sdk.runtime.integrity import Check, verify_folder

pytest.importorskip("onnx")

PLAN_ENTRY = {"backend": "tensorrt", "target": "h100", "bucket": [64, 64], "batch": 1, "precision": "bf16",
              "sm": [90], "trt_version": "10.14.1"}


needs_no_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                                       reason="judges plans of an absent library; TensorRT is installed here")


def plan_bytes(magic: bytes = b"ftrt", version=(10, 14, 1)) -> bytes:
    return magic + bytes(20) + bytes(version) + bytes(100)


@pytest.fixture
def folder(tiny_engine_folder, tmp_path):
    return copy_folder(tiny_engine_folder, tmp_path)


def add_plan_entry(folder, data: bytes, **fields) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    onnx = manifest["entries"][0]
    files = {g: f"h100/64x64/{g}.plan" for g in ("text", "adapter", "denoiser")}
    (folder / "h100" / "64x64").mkdir(parents=True)
    for rel in files.values():
        (folder / rel).write_bytes(data)
    entry = {**onnx, **PLAN_ENTRY, "files": files, "source": "onnx:-:64x64:b1:fp32",
             "sha256": {rel: hashlib.sha256(data).hexdigest() for rel in files.values()}, **fields}
    manifest["entries"].append(entry)
    (folder / "manifest.json").write_text(json.dumps(sealed(manifest)))


def test_a_sound_folder_passes_every_check_and_says_what_was_checked(folder):
    checks = verify_folder(folder)
    assert [c.subject for c in checks] == ["weights", "onnx:-:64x64:b1:fp32"] and all(c.ok for c in checks)
    assert checks[0].detail == "weights.safetensors sha256 matches"
    assert checks[1].detail.startswith("3 files, sha256 match, graphs are what the entry says, external data")
    assert str(checks[0]) == "ok   weights: weights.safetensors sha256 matches"


def test_a_tampered_graph_fails_its_entry_only(folder):
    rel = json.loads((folder / "manifest.json").read_text())["entries"][0]["files"]["adapter"]
    (folder / rel).write_bytes((folder / rel).read_bytes() + b"\0")
    weights, entry = verify_folder(folder)
    assert weights.ok and not entry.ok and "does not match the manifest's sha256" in entry.detail
    assert "\n" not in entry.detail and str(entry).startswith("FAIL onnx:-:64x64:b1:fp32: ")


def test_tampered_weights_fail_the_weights_check_only(folder):
    (folder / "weights.safetensors").write_bytes(b"other")
    weights, entry = verify_folder(folder)
    assert not weights.ok and "the shared weights) does not match" in weights.detail and entry.ok


@needs_no_tensorrt
def test_a_plan_of_an_absent_library_is_named_from_its_header(folder):
    add_plan_entry(folder, plan_bytes())
    *_, plan = verify_folder(folder)
    assert plan.ok, plan.detail
    assert plan.detail == ("3 plans, sha256 match, " + "; ".join(
        f"{g}.plan tensorrt 10.14.1 (library not installed here)" for g in ("adapter", "denoiser", "text")))


@needs_no_tensorrt
@pytest.mark.parametrize("data,says", [(plan_bytes(version=(10, 13, 0)), "was built by tensorrt 10.13.0"),
                                       (plan_bytes(magic=b"vtrt"), "was built by tensorrt_rtx 10.14.1"),
                                       (b"not a plan", "not a TensorRT plan (unknown header)")])
def test_a_plan_whose_header_disagrees_with_its_entry_fails(folder, data, says):
    add_plan_entry(folder, data)
    *_, plan = verify_folder(folder)
    assert not plan.ok and says in plan.detail


@needs_no_tensorrt
def test_a_plan_entry_contradicting_its_own_shapes_fails(folder):
    add_plan_entry(folder, plan_bytes(), bucket=[128, 64])
    *_, plan = verify_folder(folder)
    assert not plan.ok and "does not agree with its own I/O shapes" in plan.detail


def test_check_lines_read_ok_or_fail():
    assert str(Check("w", True, "fine")) == "ok   w: fine"
    assert str(Check("w", False, "bad")) == "FAIL w: bad"


# --- plans of the installed TensorRT-RTX, judged by the library first (its verdicts stood in for where the header
# alone cannot show them) ------------------------------------------------------------------------------------------
def rtx_plan_entry(folder):
    trt = pytest.importorskip("tensorrt_rtx", reason="needs TensorRT-RTX (pip install tensorrt-rtx)")
    release = ".".join(trt.__version__.split(".")[:3])
    add_plan_entry(folder, plan_bytes(b"vtrt", tuple(int(v) for v in release.split("."))), backend="tensorrt_rtx",
                   target="rtx5090", sm=[120], trt_version=trt.__version__)
    return release


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="on a GPU the library judges the plan itself")
def test_a_plan_the_library_cannot_judge_here_is_well_formed_and_names_the_gpu_it_needs(folder):
    release = rtx_plan_entry(folder)
    *_, plan = verify_folder(folder)
    assert plan.ok and plan.detail == "3 plans, sha256 match, " + "; ".join(
        f"{g}.plan tensorrt_rtx {release}, well-formed; needs an RTX GPU of sm 120 to run"
        for g in ("adapter", "denoiser", "text"))


@pytest.mark.parametrize("diagnostics,ok,says", [
    ([], True, "adapter.plan tensorrt_rtx {release}, valid here;"),
    (["COMPUTE_CAPABILITY", "DRIVER"], True,
     "adapter.plan tensorrt_rtx {release}, well-formed; not runnable here: COMPUTE_CAPABILITY, DRIVER;"),
    (["MALFORMED_ENGINE"], False, "tensorrt_rtx says h100/64x64/adapter.plan of tensorrt_rtx:rtx5090:64x64:b1:bf16 "
                                  "is malformed.;  received: ['MALFORMED_ENGINE'];  fix: rebuild the entry "
                                  "(pid-sdk build)"),
])
def test_the_librarys_verdict_comes_first(folder, monkeypatch, diagnostics, ok, says):
    import pid_sdk.runtime.tensorrt_backend as backend

    release = rtx_plan_entry(folder)
    seen = []

    def diagnose(trt, runtime, head):
        seen.append((trt.__name__, type(runtime).__name__, head[:4]))
        return diagnostics

    monkeypatch.setattr(backend, "plan_diagnostics", diagnose)
    *_, plan = verify_folder(folder)
    assert plan.ok is ok and says.format(release=release) in plan.detail, plan.detail
    assert seen[0] == ("tensorrt_rtx", "Runtime", b"vtrt")


def test_without_the_onnx_package_external_data_is_said_unchecked(folder, monkeypatch):
    import sys

    from pid_sdk.runtime.integrity import _external_data
    from pid_sdk.runtime.manifest import read_engine_manifest

    monkeypatch.setitem(sys.modules, "pid_sdk.runtime.onnxruntime_backend", None)  # import fails as if absent
    entry = read_engine_manifest(folder).entries[0]
    assert _external_data(folder, entry) == " (external data not checked: the onnx package is not installed)"


def test_a_failed_check_is_one_line_and_false(folder):
    (folder / "weights.safetensors").write_bytes(b"x")
    weights, _ = verify_folder(folder)
    assert weights.ok is False and weights.detail.count(";") >= 2 and "\n" not in weights.detail
    assert weights.detail.startswith("weights.safetensors (the shared weights) does not match the manifest's sha256")


def test_what_verify_says_of_a_well_formed_plan_it_cannot_judge(monkeypatch):
    import torch

    from pid_sdk.runtime.integrity import _unjudged
    from pid_sdk.runtime.manifest import Entry

    plan = Entry("tensorrt", (64, 64), 1, "bf16", {}, {}, {}, target="gb200", sm=(90, 100), trt_version="10.14.1")
    rtx = Entry("tensorrt_rtx", (64, 64), 1, "bf16", {}, {}, {}, target="rtx5090", sm=(120,), trt_version="1.7.1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _unjudged(plan) == "well-formed; needs a GPU of sm 90, 100 to run"
    assert _unjudged(rtx) == "well-formed; needs an RTX GPU of sm 120 to run"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _unjudged(plan) == "well-formed (the library cannot judge it before loading)"


@pytest.mark.parametrize("torch_version,verdict", [
    (None, "runnable here"), ("1.0.0", "not runnable here: compiled by torch 1.0.0, this is torch {torch}")])
def test_aoti_entries_say_whether_they_run_here(folder, monkeypatch, torch_version, verdict):
    """The package's own signature is checked by runtime/signatures.py (tests/test_signatures.py); here, what verify
    says once it holds."""
    import torch

    import pid_sdk.runtime.signatures as signatures

    monkeypatch.setattr(signatures, "check_entry", lambda folder, entry: None)
    release = torch_version or torch.__version__.split("+")[0]
    add_plan_entry(folder, b"a package", backend="aoti", target="cpu", torch_version=release, sm=[],
                   trt_version=None, precision="fp32")
    *_, package = verify_folder(folder)
    assert package.ok and package.detail == ("3 packages, sha256 match, packages are what the entry says, "
                                             + verdict.format(torch=torch.__version__))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="says what a machine without a GPU says")
def test_a_cuda_package_is_not_runnable_on_a_machine_without_a_gpu(folder, monkeypatch):
    import torch

    import pid_sdk.runtime.signatures as signatures

    monkeypatch.setattr(signatures, "check_entry", lambda folder, entry: None)
    add_plan_entry(folder, b"a package", backend="aoti", target="cuda", torch_version=torch.__version__.split("+")[0],
                   sm=[], trt_version=None, precision="fp32")
    *_, package = verify_folder(folder)
    assert package.detail.endswith("not runnable here: compiled for CUDA, and this machine has no CUDA GPU")
