"""TensorRT / TensorRT-RTX engines run against the PyTorch reference. Needs a GPU that the installed library targets;
skips with the reason everywhere else (CPU CI, or the lent sm_90 GPU without full TensorRT)."""

import pytest

from pid_sdk.runtime.selection import TARGETS, DeviceInfo

pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]


def runnable_target() -> str:
    device = DeviceInfo.detect()
    if device.sm is None:
        pytest.skip("needs a CUDA GPU")
    for target, (backend, sms) in TARGETS.items():
        if device.sm in sms and device.runtime_version(backend):
            return target
    pytest.skip(f"no installed TensorRT library targets this GPU (sm {device.sm}; tensorrt {device.tensorrt}, "
                f"tensorrt_rtx {device.tensorrt_rtx})")


def test_engines_match_pytorch(tmp_path):
    target = runnable_target()
    from export.build import build_engines
    from export.export_folder import export_engine_set
    from pid_sdk.buckets import Bucket
    from pid_sdk.compare import compare_folder, summary

    export_engine_set(tmp_path, preset="tiny-pid-2kto4k-v1.5", sizes=[Bucket(64, 96)], precisions=["fp32", "bf16"],
                      attention_dtype="fp16", log=print)
    build_engines(tmp_path, target, log=print)
    results = compare_folder(tmp_path, "tensorrt")  # each plan on its own engine, against the fp32 reference
    for r in results:
        print(r)
    print(summary(results))
    assert [r.status for r in results] == ["passed", "passed"]
    assert {r.ran["backend"] for r in results} == {"tensorrt_rtx" if target.startswith("rtx") else "tensorrt"}
