"""Which entry runs where, as a pure function of a DeviceInfo: compute capabilities, library versions, torch
releases, providers, preferences and the build command a refusal names (pid_sdk/runtime/selection.py)."""

from dataclasses import replace

import pytest
import torch

from pid_sdk.config import PRESETS
from pid_sdk.errors import ConfigError
from pid_sdk.runtime.manifest import Entry, Manifest
from pid_sdk.runtime.selection import (DeviceInfo, aoti_device, aoti_runs_on, build_command, covers, entry_runs,
                                       onnx_runs_on, runs_on, select_entry, torch_minor, version_runs)

TORCH = torch.__version__
H100 = DeviceInfo(90, tensorrt="10.14.1", name="H100")
RTX = DeviceInfo(120, tensorrt_rtx="1.7.1", name="RTX 5090")
CPU = DeviceInfo(None)


def entry(backend="onnx", precision="fp32", bucket=(64, 64), batch=1, **kw) -> Entry:
    return Entry(backend, bucket, batch, precision, {}, {}, {}, **kw)


def plan(target="h100", sm=(90,), version="10.14.1", backend="tensorrt", **kw) -> Entry:
    return entry(backend, "bf16", target=target, sm=sm, trt_version=version, **kw)


def manifest(*entries: Entry) -> Manifest:
    return Manifest(PRESETS["tiny"], "0" * 64, list(entries), "weights.safetensors")


def test_device_info_names_the_library_of_each_backend():
    both = DeviceInfo(90, tensorrt="10.1", tensorrt_rtx="1.7")
    assert both.runtime_version("tensorrt") == "10.1" and both.runtime_version("tensorrt_rtx") == "1.7"
    detected = DeviceInfo.detect()
    assert (detected.sm is None) == (not torch.cuda.is_available())


def test_runs_on_says_why_not():
    assert runs_on(plan(), H100) == (True, "")
    assert runs_on(plan(), CPU) == (False, "no CUDA GPU")
    assert runs_on(plan(), DeviceInfo(90)) == (False, "tensorrt is not installed")
    ok, why = runs_on(plan(sm=(100,)), H100)
    assert not ok and why == "built for sm [100] (hardware compatibility none), this GPU is sm 90"
    ok, why = runs_on(plan(backend="tensorrt_rtx", sm=(120,), version="1.7.1"), DeviceInfo(89, tensorrt_rtx="1.7.1"))
    assert not ok and "(TensorRT-RTX)" in why
    ok, why = runs_on(plan(version="10.13.0"), H100)
    assert not ok and why == "built with tensorrt 10.13.0, installed 10.14.1 (needs exactly the same version)"
    ok, why = runs_on(plan(version="10.15.0", version_compatible=True), H100)
    assert not ok and "a later release of the same major, or 8 -> 10, 10 -> 11" in why


@pytest.mark.parametrize("backend,built,level,sm,runs", [
    ("tensorrt", (90,), "none", 90, True), ("tensorrt", (90,), "none", 100, False),
    ("tensorrt", (86,), "ampere_plus", 120, True), ("tensorrt", (86,), "ampere_plus", 80, True),
    ("tensorrt", (86,), "ampere_plus", 75, False), ("tensorrt", (75,), "ampere_plus", 86, False),
    ("tensorrt_rtx", (89, 120), "ampere_plus", 120, True), ("tensorrt_rtx", (120,), "ampere_plus", 86, False),
    ("tensorrt", (86,), "same_compute_capability", 86, True), ("tensorrt", (86,), "same_compute_capability", 89, False),
])
def test_covers(backend, built, level, sm, runs):
    assert covers(backend, built, level, sm) is runs


def test_version_rules_read_releases_leniently_and_refuse_what_they_cannot_read():
    assert version_runs("10.14", "10.14.0", False) and version_runs("10", "10.0.0.1", False)
    assert not version_runs("ten", "10.0.0", False) and not version_runs("10.1.0", "x", True)
    assert version_runs("8.6.0", "8.6.0", True) and version_runs("10.14.1", "10.14.1", True)


def test_aoti_packages_run_on_their_device_and_torch_release():
    cpu_entry = entry("aoti", target="cpu", torch_version=TORCH)
    assert aoti_runs_on(cpu_entry, CPU) == (True, "")
    ok, why = aoti_runs_on(replace(cpu_entry, target="cuda"), CPU)
    assert not ok and why == "compiled for CUDA, and this machine has no CUDA GPU"
    ok, why = aoti_runs_on(replace(cpu_entry, torch_version="1.0.0"), CPU)
    assert not ok and why == f"compiled by torch 1.0.0, this is torch {TORCH}"
    assert torch_minor("2.13.0+cpu") == "2.13" and torch_minor("2.11.1") == "2.11" and torch_minor("3") == "3"
    assert aoti_device(CPU) == "cpu" and aoti_device(H100) == "cuda"


def test_onnx_entries_run_where_the_provider_has_their_kernels():
    assert onnx_runs_on(entry(precision="fp32"), "CPUExecutionProvider") == (True, "")
    ok, why = onnx_runs_on(entry(precision="bf16"), "CPUExecutionProvider")
    assert not ok and why == "CPUExecutionProvider has no bf16 kernels (it runs fp32, fp8-fp32, fp16)"
    assert onnx_runs_on(entry(precision="bf16"), "TensorrtExecutionProvider")[0]
    assert not onnx_runs_on(entry(precision="bf16"), "SomeOtherProvider")[0]  # judged as the CPU provider
    assert entry_runs(entry(precision="fp16"), CPU)[0] and not entry_runs(plan(), CPU)[0]
    assert entry_runs(entry("aoti", target="cpu", torch_version=TORCH), CPU)[0]


def test_selection_prefers_the_devices_packages_then_precision_then_the_graphs_own_attention():
    m = manifest(entry("onnx", "fp16"), entry("onnx", "fp32", attention_dtype="fp16"), entry("onnx", "fp32"),
                 entry("onnx", "fp32", bucket=(64, 96)), entry("onnx", "fp32", batch=2))
    chosen = select_entry(m, "f", "onnxruntime", (64, 64), 1, CPU)
    assert chosen.precision == "fp32" and chosen.attention_dtype is None
    packages = manifest(entry("aoti", "fp32", target="cuda", torch_version=TORCH),
                        entry("aoti", "bf16", target="cpu", torch_version=TORCH),
                        entry("aoti", "fp32", target="cpu", torch_version=TORCH))
    assert select_entry(packages, "f", "aoti", (64, 64), 1, CPU).key == "aoti:cpu:64x64:b1:fp32"
    plans = manifest(plan(), replace(plan(), precision="fp8"), plan(target="gb200", sm=(100,)))
    assert select_entry(plans, "f", "tensorrt", (64, 64), 1, H100).precision == "fp8"


def test_selection_refuses_with_every_reason_and_the_command_that_builds_one():
    m = manifest(entry("onnx", "bf16"), plan())
    with pytest.raises(ConfigError) as err:
        select_entry(m, "f", "onnxruntime", (64, 64), 1, CPU)
    e = err.value
    assert "onnx:-:64x64:b1:bf16: CPUExecutionProvider has no bf16 kernels" in e.received
    assert e.expected == "a onnxruntime entry for 64x64, batch 1 that CPUExecutionProvider runs (fp32, fp8-fp32, fp16)"
    assert e.fix == "pid-sdk export f --size 64x64 --batch 1 --precision fp32"
    with pytest.raises(ConfigError) as err:
        select_entry(manifest(), "f", "tensorrt", (128, 64), 2, H100)
    assert err.value.received == "entries: none" and ", sm 90, 10.14.1" in err.value.expected
    assert err.value.fix == "pid-sdk export f --size 128x64 --batch 2 && pid-sdk build f --target h100 --size 128x64 " \
                            "--batch 2"
    with pytest.raises(ConfigError) as err:
        select_entry(manifest(), "f", "aoti", (64, 64), 1, CPU)
    assert f"compiled by torch {torch_minor(TORCH)}.x" in err.value.expected


def test_build_commands_for_each_backend_and_machine():
    assert build_command("f", "aoti", (64, 96), 1, CPU) == "pid-sdk export f --size 64x96 --batch 1 --format aoti " \
                                                           "--device cpu"
    assert build_command("f", "aoti", (64, 96), 1, H100).endswith("--device cuda")
    assert build_command("f", "onnxruntime", (64, 96), 1, CPU, "TensorrtExecutionProvider").endswith("--precision fp32")
    assert "this machine has none" in build_command("f", "tensorrt", (64, 96), 1, CPU)
    assert build_command("f", "tensorrt", (64, 96), 1, RTX).endswith("--target rtx5090 --size 64x96 --batch 1")
    assert build_command("f", "tensorrt", (64, 96), 1, DeviceInfo(75)).endswith("--target sm75 --size 64x96 --batch 1")


# --- what mutation testing showed no test held (scripts/mutation.py) ------------------------------------------------
def test_detect_reads_the_gpus_capability_and_the_installed_libraries(monkeypatch):
    import pid_sdk.runtime.selection as selection

    monkeypatch.setattr(selection, "_version", lambda module: {"tensorrt": "10.14.1", "tensorrt_rtx": "1.7.1"}[module])
    assert DeviceInfo.detect() == DeviceInfo(None, "10.14.1", "1.7.1", "cpu") or torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "NVIDIA H100")
    assert DeviceInfo.detect() == DeviceInfo(90, "10.14.1", "1.7.1", "NVIDIA H100")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda: (12, 1))
    assert DeviceInfo.detect().sm == 121


def test_an_absent_library_has_no_version():
    from pid_sdk.runtime.selection import _version

    assert _version("pid_sdk_no_such_module") is None and _version("torch") == torch.__version__


def test_ampere_plus_plans_need_every_built_capability_at_80_or_more():
    assert covers("tensorrt", (80,), "ampere_plus", 80) and covers("tensorrt", (80, 90), "ampere_plus", 86)
    assert not covers("tensorrt", (79, 90), "ampere_plus", 90)


@pytest.mark.parametrize("built,installed,runs", [
    ("10.14.1", "10.14.1", True), ("10.14.1", "10.14.2", True), ("10.14.1", "10.13.0", False),
    ("8.6.0", "10.0.0", True), ("10.0.0", "11.0.0", True), ("8.6.0", "11.0.0", False), ("10.0.0", "8.6.0", False),
    ("9.0.0", "10.0.0", False), ("8.5.0", "8.6.0", False), ("8.6.0", "9.0.0", False), ("11.0.0", "10.0.0", False),
])
def test_the_documented_version_compatible_pairs(built, installed, runs):
    assert version_runs(built, installed, True) is runs
    assert version_runs(built, installed, True, "tensorrt") is runs
    assert version_runs(built, installed, True, "tensorrt_rtx") is (built == installed)  # RTX: its own release only
    assert version_runs(built, installed, False) is (built == installed)


def test_releases_are_read_as_three_numbers():
    from pid_sdk.runtime.selection import _release

    assert _release("10.14") == (10, 14, 0) and _release("10.14.1.48") == (10, 14, 1) and _release("7") == (7, 0, 0)
    assert _release("") is None and _release("10.x") is None
    assert version_runs("10.14.1.48", "10.14.1", False) and not version_runs("", "", False)


def test_torch_minor_drops_the_local_build_label():
    assert torch_minor("2.13.0+cu128") == "2.13" and torch_minor("2.13+cpu") == "2.13"
    assert aoti_runs_on(entry("aoti", target="cpu", torch_version=None), CPU)[0] is False


def test_the_refusal_names_height_then_width_and_every_entry(monkeypatch):
    m = manifest(entry("onnx", "fp32", bucket=(64, 96), batch=2), entry("onnx", "fp32", bucket=(96, 64)),
                 entry("onnx", "bf16", bucket=(64, 96)))
    with pytest.raises(ConfigError) as err:
        select_entry(m, "f", "onnxruntime", (64, 96), 1, CPU)
    e = err.value
    assert e.what == "No onnxruntime engine for a 64x96 output at batch 1 runs on this machine."
    assert e.received == "onnx:-:64x96:b1:bf16: CPUExecutionProvider has no bf16 kernels (it runs fp32, fp8-fp32, fp16)"
    m = manifest(plan(version="10.13.0"), replace(plan(version="10.12.0"), precision="fp8"))
    with pytest.raises(ConfigError) as err:
        select_entry(m, "f", "tensorrt", (64, 64), 1, H100)
    assert err.value.received.count("; ") == 1 and "installed 10.14.1" in err.value.received
    with pytest.raises(ConfigError) as err:
        select_entry(manifest(entry("onnx", "fp32", bucket=(64, 96))), "f", "onnxruntime", (64, 64), 1, CPU)
    assert err.value.received == "entries: ['onnx:-:64x96:b1:fp32']"


def test_an_rtx_only_machine_names_its_library_in_the_refusal():
    with pytest.raises(ConfigError) as err:
        select_entry(manifest(), "f", "tensorrt", (64, 64), 1, RTX)
    assert err.value.expected == "a tensorrt entry for 64x64, batch 1, sm 120, 1.7.1"


def test_packages_of_the_other_device_come_last_and_unknown_precisions_after_known_ones():
    from pid_sdk.runtime.selection import _preference

    order = ("fp32", "bf16")
    cuda = entry("aoti", "fp32", target="cuda", torch_version=TORCH)
    cpu = entry("aoti", "bf16", target="cpu", torch_version=TORCH)
    assert _preference(cuda, order, CPU) == (True, 0, False) and _preference(cpu, order, CPU) == (False, 1, False)
    assert _preference(cuda, order, H100) == (False, 0, False)
    assert _preference(entry("onnx", "fp32", target=None), order, H100) == (False, 0, False)
    assert _preference(entry("onnx", "fp16", attention_dtype="fp16"), order, CPU) == (False, 2, True)


def test_default_provider_is_the_cpu_one():
    assert entry_runs(entry(precision="bf16"), CPU) == onnx_runs_on(entry(precision="bf16"), "CPUExecutionProvider")
    assert build_command("f", "onnxruntime", (64, 64), 1, CPU) == "pid-sdk export f --size 64x64 --batch 1 " \
                                                                   "--precision fp32"
    assert build_command("f", "onnxruntime", (64, 64), 1, CPU, "NoSuchProvider").endswith("--precision fp32")
    with pytest.raises(ConfigError) as err:
        select_entry(manifest(), "f", "onnxruntime", (64, 64), 1, CPU, "NoSuchProvider")
    assert err.value.expected.endswith("that NoSuchProvider runs ()")
    assert build_command("f", "tensorrt", (64, 64), 1, CPU) == (
        "TensorRT engines need a CUDA GPU and this machine has none: decode here with backend='onnxruntime' or "
        "'pytorch'; build engines on the GPU host (pid-sdk build --target ...)")


def test_runs_on_applies_the_entrys_own_hardware_and_version_rules():
    assert runs_on(plan(sm=(86,), hardware_compatibility="ampere_plus"), H100) == (True, "")
    assert runs_on(plan(version="10.13.0", version_compatible=True), H100) == (True, "")
    assert runs_on(plan(version="10.15.0", version_compatible=True), H100) == (
        False, "built with tensorrt 10.15.0, installed 10.14.1 (needs a later release of the same major, or "
               "8 -> 10, 10 -> 11 version)")
    cuda_package = entry("aoti", target="cuda", torch_version=TORCH)
    assert entry_runs(cuda_package, CPU) == (False, "compiled for CUDA, and this machine has no CUDA GPU")


def test_selection_asks_the_callers_provider():
    m = manifest(entry("onnx", "bf16"))
    assert select_entry(m, "f", "onnxruntime", (64, 64), 1, CPU, "TensorrtExecutionProvider").precision == "bf16"


def test_every_reason_is_listed_and_the_size_is_height_by_width():
    m = manifest(entry("onnx", "bf16", bucket=(64, 96)), entry("onnx", "fp8", bucket=(64, 96)))
    with pytest.raises(ConfigError) as err:
        select_entry(m, "f", "onnxruntime", (64, 96), 1, CPU)
    assert err.value.received == (
        "onnx:-:64x96:b1:bf16: CPUExecutionProvider has no bf16 kernels (it runs fp32, fp8-fp32, fp16); "
        "onnx:-:64x96:b1:fp8: CPUExecutionProvider has no fp8 kernels (it runs fp32, fp8-fp32, fp16)")
    assert err.value.expected == ("a onnxruntime entry for 64x96, batch 1 that CPUExecutionProvider runs (fp32, "
                                  "fp8-fp32, fp16)")


def test_a_precision_keeps_selection_to_its_entries_of_the_backend_asked():
    m = manifest(entry("onnx", "fp16"), entry("onnx", "fp32"), plan("rtx5090", (120,), "1.7.1", "tensorrt_rtx"))
    assert select_entry(m, "f", "onnxruntime", (64, 64), 1, RTX).precision == "fp32"
    assert select_entry(m, "f", "onnxruntime", (64, 64), 1, RTX, precision="fp16").precision == "fp16"
    assert select_entry(m, "f", "tensorrt", (64, 64), 1, RTX, precision="bf16").backend == "tensorrt_rtx"
    with pytest.raises(ConfigError) as err:  # the bf16 plan runs here, but it is not an ONNX Runtime entry
        select_entry(m, "f", "onnxruntime", (64, 64), 1, RTX, precision="bf16")
    assert err.value.expected.startswith("a onnxruntime entry for 64x64, batch 1, precision bf16 that ")
