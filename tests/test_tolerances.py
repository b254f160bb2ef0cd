"""The tolerance table refuses wrong answers and passes right ones, row by row.

Negative controls: the demo model's decode of the sample latent with another seed, and a box blur of the right
image (2x2; 4x4 for fp8), must fail the image bounds of every row. Real paths: each precision's graphs under ONNX
Runtime (fp32, fp16, fp32 with fp16 attention, bf16 as its fp32 twin, fp8-fp32) and the PyTorch bf16 and FP8
settings on the demo model must pass. The table itself is the one bench/tolerances.py derived (docs/results).
"""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from pid_sdk import DEMO_MODEL, Decoder, Speed
from pid_sdk.compare import KINDS, TOLERANCES, box_blur, compare, run_parity

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "sample_latent_flux1.safetensors"
MEASURED = ROOT / "docs" / "results" / "2026-12-06-cpu-tolerances.json"


@pytest.fixture(scope="module")
def demo():
    dec = Decoder.load(DEMO_MODEL, device="cpu")
    z = load_file(str(SAMPLE))["latent"]
    return dec.decode(z, seed=0), dec.decode(z, seed=1), z


@pytest.mark.parametrize("row", sorted(TOLERANCES))
def test_another_seed_fails_every_row(demo, row):
    right, other, _ = demo
    c = compare("other seed", other, right, row)
    assert not c.passed, str(c)


@pytest.mark.parametrize("row", sorted(TOLERANCES))
def test_a_box_blur_fails_every_row(demo, row):
    right, _, _ = demo
    c = compare("blur", box_blur(right, 4 if row == "fp8" else 2), right, row)
    assert not c.passed, str(c)


@pytest.mark.parametrize("row", sorted(TOLERANCES))
def test_the_right_image_passes_every_row(demo, row):
    right, _, _ = demo
    assert compare("itself", right.clone(), right, row).passed


def test_the_table_is_the_one_derived_from_the_measured_spread():
    measured = json.loads(MEASURED.read_text())
    assert set(measured["derived"]) == set(TOLERANCES) and all(measured["separated"].values())
    for row, kinds in measured["derived"].items():
        for kind in KINDS:
            assert getattr(TOLERANCES[row], kind).__dict__ == pytest.approx(kinds[kind]), (row, kind)


# --- the real path of every precision passes ------------------------------------------------------------------
def test_pytorch_bf16_weights_pass_the_bf16_row_on_the_demo_model(demo):
    report = run_parity(Decoder.load(DEMO_MODEL, device="cpu"), Decoder.load(DEMO_MODEL, device="cpu", speed="bf16"),
                        demo[2][None], precision="bf16")
    assert report.passed and report.image.max_abs > 0, str(report)  # passed, and really another precision


def test_pytorch_fp8_matmuls_pass_the_fp8_row_on_the_demo_model(demo):
    report = run_parity(Decoder.load(DEMO_MODEL, device="cpu", speed="bf16"),
                        Decoder.load(DEMO_MODEL, device="cpu", speed=Speed(weights="fp8")), demo[2][None],
                        precision="fp8")
    assert report.passed and report.image.max_abs > 0, str(report)


@pytest.fixture(scope="module")
def every_precision(tmp_path_factory):
    pytest.importorskip("onnxscript")
    pytest.importorskip("modelopt", reason="fp8 calibration needs nvidia-modelopt")
    from export.export_folder import export_engine_set
    from pid_sdk.buckets import Bucket

    folder = tmp_path_factory.mktemp("every-precision")
    variants = [("fp32", None), ("fp16", None), ("fp32", "fp16"), ("bf16", None), ("fp8-fp32", None)]
    export_engine_set(folder, preset="tiny-pid-2k", sizes=[Bucket(64, 96)], variants=variants, log=lambda *_: None)
    return folder


@pytest.mark.parametrize("steps", [1, 4])
def test_onnxruntime_graphs_of_every_precision_pass_their_row(every_precision, steps):
    from pid_sdk.compare import compare_folder

    results = compare_folder(every_precision, "onnxruntime", steps=steps, seed=1)
    assert {r.entry: r.report.image.row for r in results} == {
        "onnx:-:64x96:b1:fp32": "fp32", "onnx:-:64x96:b1:fp16": "fp16", "onnx:-:64x96:b1:fp32-attn-fp16": "fp16",
        "onnx:-:64x96:b1:bf16": "bf16-twin", "onnx:-:64x96:b1:fp8-fp32": "fp8"}
    assert all(r.status == "passed" for r in results), "\n".join(map(str, results))
