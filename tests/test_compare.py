"""The parity comparators on tensors whose errors are known: every statistic, every bound, the verdict, the needed
tolerance, the row a precision is judged by (pid_sdk/compare.py)."""

import math

import pytest
import torch

from pid_sdk.compare import (TOLERANCES, Comparison, EntryResult, ParityReport, Row, Tolerance, box_blur, compare,
                             judged_precision, summary)


def with_error(ref: torch.Tensor, error: torch.Tensor, precision: str = "fp32", kind: str = "image") -> Comparison:
    return compare("x", ref + error, ref, precision, kind)


def test_every_statistic_of_a_known_error():
    ref = torch.tensor([1.0, -1.0, 0.5, -0.5])
    c = with_error(ref, torch.tensor([0.1, 0.0, 0.0, -0.3]))
    assert c.max_abs == pytest.approx(0.3) and c.mean_abs == pytest.approx(0.1)
    assert c.rel_l2 == pytest.approx(math.sqrt(0.1) / math.sqrt(2.5))
    rmse = math.sqrt((0.01 + 0.09) / 4)
    assert c.psnr == pytest.approx(20 * math.log10(2 / rmse)) and c.scale == 1.0
    a, b = ref + torch.tensor([0.1, 0.0, 0.0, -0.3]), ref
    assert c.cosine == pytest.approx(float(a @ b / (a.norm() * b.norm())))
    assert c.quantiles["50"] == pytest.approx(0.05) and c.quantiles["99.9"] == pytest.approx(0.3, rel=1e-2)


def test_the_scale_is_the_references_peak_above_one():
    ref = torch.tensor([4.0, -2.0, 0.0, 1.0])
    c = with_error(ref, torch.tensor([0.4, 0.0, 0.0, 0.0]), kind="step")
    assert c.scale == 4.0 and c.needed.max_abs == pytest.approx(0.1) and c.needed.mean_abs == pytest.approx(0.025)
    assert c.psnr == pytest.approx(20 * math.log10(2 * 4.0 / 0.2))  # rmse 0.2, range 2 x scale
    assert with_error(torch.tensor([0.5, -0.25]), torch.tensor([0.1, 0.0])).scale == 1.0  # never below 1


def test_identical_tensors_pass_with_an_infinite_psnr():
    ref = torch.randn(100)
    c = compare("x", ref.clone(), ref)
    assert c.psnr == math.inf and c.max_abs == 0 and c.passed and c.failures == []


@pytest.mark.parametrize("bound", ["max_abs", "mean_abs", "min_cosine", "min_psnr"])
def test_each_bound_alone_refuses_what_breaks_it(monkeypatch, bound):
    """One bound at a time, right at the result's value: passes there, fails just past it."""
    ref = torch.linspace(-1, 1, 1000)
    c = with_error(ref, 0.01 * torch.sin(torch.arange(1000.0)))
    value = getattr(c.needed, bound)
    for tightened, passes in ((value, True), (value * (1.001 if bound == "min_psnr" else 0.999)
                                               if bound != "min_cosine" else 1 - (1 - value) * 0.999, False)):
        monkeypatch.setitem(TOLERANCES, "fp32", Row(Tolerance(), Tolerance(**{bound: tightened})))
        assert c.passed is passes and c.failures == ([] if passes else [bound]), (bound, tightened)


def test_steps_and_images_are_judged_by_their_own_bounds(monkeypatch):
    monkeypatch.setitem(TOLERANCES, "fp32", Row(step=Tolerance(max_abs=0.5), image=Tolerance(max_abs=0.05)))
    ref = torch.zeros(10)
    error = torch.full((10,), 0.1)
    assert with_error(ref, error, kind="step").passed and not with_error(ref, error, kind="image").passed


def test_a_non_finite_result_breaks_every_bound_and_nan_never_passes():
    ref = torch.ones(4)
    c = with_error(ref, torch.tensor([math.inf, 0, 0, 0]))
    assert c.failures == ["max_abs", "mean_abs", "min_cosine", "min_psnr"] and not c.passed
    nan = with_error(ref, torch.tensor([math.nan, 0, 0, 0]))
    assert not nan.passed


def test_reduced_precisions_fall_back_to_their_base_row():
    ref = torch.ones(4)
    assert with_error(ref, torch.zeros(4), "fp8-fp32").row == "fp8"
    assert with_error(ref, torch.zeros(4), "bf16-twin").row == "bf16-twin"
    assert with_error(ref, torch.zeros(4), "fp8-twin").tolerance == TOLERANCES["fp8"].image


def test_the_string_says_the_verdict_and_the_broken_bounds():
    ref = torch.linspace(-1, 1, 100)
    assert str(compare("ok", ref, ref)).startswith("PASS ok")
    bad = str(with_error(ref, torch.full((100,), 0.5)))
    assert bad.startswith("FAIL (max_abs, mean_abs") and "psnr" in bad and "p99=" in bad


def test_a_report_passes_only_when_every_step_and_the_image_pass():
    ref = torch.linspace(-1, 1, 100)
    good, bad = compare("s", ref, ref, kind="step"), with_error(ref, torch.full((100,), 0.5), kind="step")
    image = compare("image", ref, ref)
    assert ParityReport([good, good], image).passed
    assert not ParityReport([good, bad], image).passed
    assert not ParityReport([good], with_error(ref, torch.full((100,), 0.5))).passed
    assert str(ParityReport([good], image)).count("\n") == 1


def test_box_blur_keeps_the_size_and_averages_k_by_k():
    image = torch.zeros(1, 1, 6, 6)
    image[0, 0, 2, 2] = 16.0
    for k in (2, 4):
        blurred = box_blur(image, k)
        assert blurred.shape == image.shape and blurred.sum().item() == pytest.approx(16.0)
        assert blurred.max().item() == pytest.approx(16.0 / k**2)
    flat = torch.full((1, 3, 5, 7), 0.25)
    torch.testing.assert_close(box_blur(flat, 4), flat)  # edges replicated: a flat image stays flat


def test_the_row_an_entry_is_judged_by():
    from pid_sdk.runtime.manifest import Entry

    def entry(precision, attention=None):
        return Entry("onnx", (64, 64), 1, precision, {}, {}, {}, attention_dtype=attention)

    assert judged_precision(entry("bf16"), upcast=True) == "bf16-twin"
    assert judged_precision(entry("fp32", "fp16")) == "fp16"
    assert judged_precision(entry("fp8-fp32", "fp8")) == "fp8-fp32"
    assert judged_precision(entry("fp32")) == "fp32"


def test_summary_counts_each_status():
    results = [EntryResult("a", "passed"), EntryResult("b", "failed", reason="x"), EntryResult("c", "skipped"),
               EntryResult("d", "passed")]
    assert summary(results) == "2 passed, 1 failed, 1 skipped"
    assert "error: x" in str(results[1]) and str(results[2]).startswith("== c: SKIPPED")
