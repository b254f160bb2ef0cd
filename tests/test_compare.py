"""The parity comparators on tensors whose errors are known: every statistic, every bound, the verdict, the needed
tolerance, the row a precision is judged by (pid_sdk/compare.py)."""

import math

import pytest
import torch

from conftest import copy_folder
from pid_sdk.compare import (TOLERANCES, Comparison, EntryResult, ParityReport, Row, Tolerance, box_blur, compare,
                             compare_folder, judged_precision, run_parity, summary)


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


def test_an_entry_result_reads_as_pinned():
    ran = {"backend": "onnxruntime", "provider": "CPUExecutionProvider", "precision": "fp32",
           "files": ["onnx/a.onnx", "onnx/b.onnx"]}
    report = ParityReport([compare("step 1 v", torch.ones(2), torch.ones(2))], compare("image", torch.ones(2),
                                                                                          torch.ones(2)))
    text = str(EntryResult("onnx:-:64x64:b1:fp32", "passed", ran, report)).splitlines()
    assert text[:2] == ["== onnx:-:64x64:b1:fp32: PASSED",
                        "   ran: onnxruntime on CPUExecutionProvider, precision fp32, files onnx/a.onnx, onnx/b.onnx"]
    assert text[2:] == str(report).splitlines() and len(text) == 4
    assert str(EntryResult("k", "skipped", reason="no GPU")) == "== k: SKIPPED\n   skipped: no GPU"
    assert str(EntryResult("k", "failed", reason="bad")) == "== k: FAILED\n   error: bad"


# --- run_parity and compare_folder on the tiny model (fast enough for scripts/mutation.py) -------------------------
def tiny(seed: int):
    import pid_sdk

    return pid_sdk.Decoder.load(preset="tiny", seed=seed)


def test_parity_of_a_decoder_with_itself_passes_at_every_step():
    latent = torch.randn(1, 16, 2, 2, generator=torch.Generator().manual_seed(0))
    report = run_parity(tiny(0), tiny(0), latent, precision="fp32", steps=3, seed=5)
    assert report.passed and [c.name for c in report.steps] == ["step 1 v", "step 2 v", "step 3 v"]
    assert all(c.kind == "step" and c.max_abs == 0 for c in report.steps) and report.image.kind == "image"
    assert report.image.max_abs == 0 and report.image.precision == "fp32"


def test_parity_of_other_weights_fails_at_every_step_and_in_the_image():
    latent = torch.randn(1, 16, 2, 2, generator=torch.Generator().manual_seed(0))
    report = run_parity(tiny(0), tiny(1), latent, precision="fp32", steps=2, seed=5)
    assert not report.passed and not report.image.passed and not any(c.passed for c in report.steps)


def test_the_candidate_is_asked_on_the_references_trajectory():
    """Each step compares the two velocities at the same x, and the loop follows the reference's velocity: the
    xs the loop visits are those of the reference's own decode, whatever the candidate answers."""
    ref, cand = tiny(0), tiny(1)
    seen = []
    original = ref.runtime.backend

    def spy(**kw):
        step = original(**kw)
        infer = step.infer
        step.infer = lambda feeds: (seen.append(feeds["x"].clone()), infer(feeds))[1]
        return step

    ref.runtime.backend = spy
    latent = torch.randn(1, 16, 2, 2, generator=torch.Generator().manual_seed(0))
    run_parity(ref, cand, latent, precision="fp32", steps=2, seed=7)
    assert len(seen) == 4  # two steps of the loop, then the reference's own decode
    assert torch.equal(seen[0], torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(seen[0], seen[2]) and torch.equal(seen[1], seen[3])


def test_a_folder_of_the_tiny_model_passes_its_own_parity(tiny_engine_folder):
    pytest.importorskip("onnxruntime")
    [result] = compare_folder(tiny_engine_folder, "onnxruntime", steps=2, seed=3)
    assert result.status == "passed" and result.entry == "onnx:-:64x64:b1:fp32"
    assert result.ran["backend"] == "onnxruntime" and len(result.report.steps) == 2
    assert result.report.image.precision == "fp32" and result.report.image.max_abs < 1e-4
    latent = torch.randn(1, 16, 2, 2, generator=torch.Generator().manual_seed(11))
    [given] = compare_folder(tiny_engine_folder, "onnxruntime", steps=1, seed=3, latent=latent)
    [seeded] = compare_folder(tiny_engine_folder, "onnxruntime", steps=1, seed=3)
    assert given.report.image.max_abs != seeded.report.image.max_abs  # the latent given was the one decoded


def test_compare_folder_refuses_what_it_cannot_compare(tiny_engine_folder):
    from pid_sdk.errors import InputError

    with pytest.raises(InputError) as e:
        compare_folder(tiny_engine_folder, "onnxruntime", sizes=["128x128"])
    assert str(e.value) == ("Nothing to compare.\n  received: ['128x128']\n"
                            f"  expected: onnxruntime entries in {tiny_engine_folder}\n"
                            "  fix: pid-sdk export / pid-sdk build first")
    with pytest.raises(InputError, match="Nothing to compare") as e:
        compare_folder(tiny_engine_folder, "tensorrt_rtx")
    assert e.value.received == "all sizes"
    with pytest.raises(InputError, match="steps must be an integer in \\[1, 50\\]"):
        compare_folder(tiny_engine_folder, "onnxruntime", steps=51)
    with pytest.raises(InputError, match="verify must be True or False"):
        compare_folder(tiny_engine_folder, "onnxruntime", verify="no")


def test_relative_error_is_against_the_references_own_norm_however_small():
    c = compare("x", torch.tensor([0.2, 0.0]), torch.tensor([0.1, 0.0]))
    assert c.rel_l2 == pytest.approx(1.0) and c.scale == 1.0


def test_a_nan_result_has_the_worst_psnr():
    c = compare("x", torch.tensor([float("nan"), 0.0]), torch.tensor([0.5, 0.0]))
    assert c.psnr == -math.inf and not c.passed


def test_a_comparison_reads_as_pinned():
    c = compare("image", torch.tensor([0.5, 0.25, 0.0, 0.0]), torch.tensor([0.5, 0.0, 0.0, 0.0]))
    assert list(c.quantiles) == ["50", "90", "99", "99.9"]
    assert str(c) == ("FAIL (max_abs, mean_abs, min_cosine, min_psnr) image          fp32  max 2.50e-01 mean 6.25e-02 "
                      "rel 5.00e-01 cos 0.8944272 psnr 24.1 dB scale 1.0  p50=0.0e+00 p90=1.8e-01 p99=2.4e-01 "
                      "p99.9=2.5e-01")


def test_odd_blurs_keep_the_size_too():
    image = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6)
    for k in (1, 2, 3, 4, 5):
        assert box_blur(image, k).shape == image.shape, k
    torch.testing.assert_close(box_blur(image, 3)[0, 0, 2, 2], image[0, 0, 1:4, 1:4].mean())


def test_results_above_torch_quantiles_limit_are_sampled():
    ref = torch.zeros(17_000_000)
    c = compare("big", ref + 1e-3, ref)
    assert c.quantiles["50"] == pytest.approx(1e-3) and c.max_abs == pytest.approx(1e-3)


def test_compare_folder_defaults_onnxruntime_four_steps_seed_zero_and_verified(tiny_engine_folder, tmp_path):
    pytest.importorskip("onnxruntime")
    import json

    [default] = compare_folder(tiny_engine_folder)
    [explicit] = compare_folder(tiny_engine_folder, "onnxruntime", steps=4, seed=0)
    assert len(default.report.steps) == 4 and default.report.image.max_abs == explicit.report.image.max_abs
    folder = copy_folder(tiny_engine_folder, tmp_path)
    data = json.loads((folder / "manifest.json").read_text())
    data["entries"][0]["sha256"] = {}
    (folder / "manifest.json").write_text(json.dumps(data))
    from pid_sdk.errors import CheckpointError

    with pytest.raises(CheckpointError, match="edited after it was written"):
        compare_folder(folder)


def test_an_entry_outside_its_tolerance_fails_and_says_so(tiny_engine_folder, monkeypatch):
    pytest.importorskip("onnxruntime")
    import pid_sdk.compare as compare_module

    zero = Tolerance(max_abs=0.0, mean_abs=0.0, min_cosine=1.0, min_psnr=math.inf)
    monkeypatch.setitem(compare_module.TOLERANCES, "fp32", Row(step=zero, image=zero))
    [result] = compare_folder(tiny_engine_folder, steps=1)
    assert result.status == "failed" and not result.report.passed and str(result).startswith(
        "== onnx:-:64x64:b1:fp32: FAILED\n   ran: onnxruntime on CPUExecutionProvider, precision fp32")


def test_a_damaged_entry_fails_without_running_and_one_this_machine_cannot_run_is_skipped(tiny_engine_folder,
                                                                                           tmp_path):
    pytest.importorskip("onnxruntime")
    import hashlib
    import json

    from conftest import sealed

    folder = copy_folder(tiny_engine_folder, tmp_path)
    rel = json.loads((folder / "manifest.json").read_text())["entries"][0]["files"]["text"]
    (folder / rel).write_bytes((folder / rel).read_bytes() + b"\0")
    [damaged] = compare_folder(folder, steps=1)
    assert damaged.status == "failed" and damaged.report is None
    assert "does not match the manifest's sha256" in damaged.reason
    assert damaged.reason.endswith("; fix: rebuild it (pid-sdk export / pid-sdk build)")
    data = json.loads((folder / "manifest.json").read_text())
    plan = b"vtrt" + bytes(20) + bytes((1, 7, 1)) + bytes(100)
    (folder / "rtx").mkdir()
    files = {g: f"rtx/{g}.plan" for g in ("text", "adapter", "denoiser")}
    for path in files.values():
        (folder / path).write_bytes(plan)
    data["entries"].append({**data["entries"][0], "backend": "tensorrt_rtx", "target": "rtx5090", "precision": "bf16",
                            "sm": [120], "trt_version": "1.7.1", "files": files,
                            "sha256": {p: hashlib.sha256(plan).hexdigest() for p in files.values()}})
    (folder / "manifest.json").write_text(json.dumps(sealed(data)))
    [skipped] = compare_folder(folder, "tensorrt", steps=1)
    assert skipped.status == "skipped" and skipped.entry == "tensorrt_rtx:rtx5090:64x64:b1:bf16"
    assert str(skipped) == "== tensorrt_rtx:rtx5090:64x64:b1:bf16: SKIPPED\n   skipped: no CUDA GPU" or \
        torch.cuda.is_available()


def test_run_parity_defaults_to_four_steps_and_seed_zero():
    latent = torch.randn(1, 16, 2, 2, generator=torch.Generator().manual_seed(0))
    a, b = tiny(0), tiny(1)
    default = run_parity(a, b, latent, precision="fp32")
    explicit = run_parity(a, b, latent, precision="fp32", steps=4, seed=0)
    assert len(default.steps) == 4 and default.image.max_abs == explicit.image.max_abs
    assert [c.max_abs for c in default.steps] == [c.max_abs for c in explicit.steps]


# --- one folder, several entries: each judged on its own graph, one failure or skip never stops the rest ------------
TWIN = "bf16 (its fp32 twin: no bf16 kernels here)"


def test_each_entry_runs_on_its_own_graph_and_a_bf16_one_as_its_fp32_twin(tiny_bf16_engine_folder):
    pytest.importorskip("onnxruntime")
    fp32, bf16 = compare_folder(tiny_bf16_engine_folder, steps=1, sizes=["64x96"])
    assert (fp32.entry, fp32.status, fp32.ran["precision"]) == ("onnx:-:64x96:b1:fp32", "passed", "fp32")
    assert (bf16.entry, bf16.status, bf16.ran["precision"]) == ("onnx:-:64x96:b1:bf16", "passed", TWIN)
    assert all("64x96-b1-bf16" in f for f in bf16.ran["files"])
    assert [c.precision for c in [*bf16.report.steps, bf16.report.image]] == ["bf16-twin", "bf16-twin"]
    assert [c.precision for c in [*fp32.report.steps, fp32.report.image]] == ["fp32", "fp32"]


def test_a_damaged_entry_fails_alone_and_the_next_entry_still_runs(tiny_bf16_engine_folder, tmp_path):
    pytest.importorskip("onnxruntime")
    import json

    folder = copy_folder(tiny_bf16_engine_folder, tmp_path)
    rel = json.loads((folder / "manifest.json").read_text())["entries"][0]["files"]["denoiser"]
    (folder / rel).write_bytes((folder / rel).read_bytes() + b"\0")
    damaged, bf16 = compare_folder(folder, steps=1)
    assert (damaged.entry, damaged.status, damaged.report) == ("onnx:-:64x96:b1:fp32", "failed", None)
    assert bf16.status == "passed" and bf16.ran["precision"] == TWIN


def test_an_entry_recorded_with_another_digest_runs_only_unverified(tiny_bf16_engine_folder, tmp_path):
    pytest.importorskip("onnxruntime")
    import json

    from conftest import sealed

    folder = copy_folder(tiny_bf16_engine_folder, tmp_path)
    data = json.loads((folder / "manifest.json").read_text())
    entry = data["entries"][0]
    entry["sha256"] = {path: "0" * 64 for path in entry["sha256"]}
    (folder / "manifest.json").write_text(json.dumps(sealed(data)))
    refused = compare_folder(folder, steps=1)[0]
    assert refused.status == "failed" and "does not match the manifest's sha256" in refused.reason
    assert compare_folder(folder, steps=1, verify=False)[0].status == "passed"


def test_the_reference_weights_are_verified_before_anything_runs(tiny_engine_folder, tmp_path):
    from pid_sdk.errors import CheckpointError

    folder = copy_folder(tiny_engine_folder, tmp_path)
    weights = folder / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor's data: still a well-formed file
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        compare_folder(folder, steps=1)
    assert len(compare_folder(folder, steps=1, verify=False)) == 1  # the explicit opt-out reads them as they are


def test_a_provider_onnxruntime_does_not_know_skips_every_entry_with_the_reason(tiny_bf16_engine_folder):
    pytest.importorskip("onnxruntime")
    results = compare_folder(tiny_bf16_engine_folder, steps=1, providers=["NoSuchExecutionProvider"])
    assert [(r.entry, r.status) for r in results] == [("onnx:-:64x96:b1:fp32", "skipped"),
                                                      ("onnx:-:64x96:b1:bf16", "skipped")]
    assert all(r.reason.startswith("ONNX Runtime knows no such execution provider") for r in results)
    assert all(r.report is None and r.ran is None for r in results)


def test_entries_this_machine_cannot_run_are_each_skipped(tiny_engine_folder, tmp_path):
    pytest.importorskip("onnxruntime")
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine may run TensorRT-RTX entries")
    import hashlib
    import json

    from conftest import sealed

    folder = copy_folder(tiny_engine_folder, tmp_path)
    data = json.loads((folder / "manifest.json").read_text())
    plan = b"vtrt" + bytes(20) + bytes((1, 7, 1)) + bytes(100)
    for precision in ("bf16", "fp8"):
        files = {g: f"rtx-{precision}/{g}.plan" for g in ("text", "adapter", "denoiser")}
        (folder / f"rtx-{precision}").mkdir()
        for path in files.values():
            (folder / path).write_bytes(plan)
        data["entries"].append({**data["entries"][0], "backend": "tensorrt_rtx", "target": "rtx5090", "sm": [120],
                                "precision": precision, "trt_version": "1.7.1", "files": files,
                                "sha256": {p: hashlib.sha256(plan).hexdigest() for p in files.values()}})
    (folder / "manifest.json").write_text(json.dumps(sealed(data)))
    results = compare_folder(folder, "tensorrt", steps=1)
    assert [(r.entry, r.status, r.reason) for r in results] == [
        ("tensorrt_rtx:rtx5090:64x64:b1:bf16", "skipped", "no CUDA GPU"),
        ("tensorrt_rtx:rtx5090:64x64:b1:fp8", "skipped", "no CUDA GPU")]


def test_the_seed_reaches_the_parity_run_as_well_as_the_latent(tiny_engine_folder):
    pytest.importorskip("onnxruntime")
    latent = torch.randn(1, 16, 2, 2, generator=torch.Generator().manual_seed(11))
    [a] = compare_folder(tiny_engine_folder, steps=1, seed=0, latent=latent)
    [b] = compare_folder(tiny_engine_folder, steps=1, seed=5, latent=latent)
    assert a.report.image.max_abs != b.report.image.max_abs  # the same latent, other noise


def test_the_steps_refusal_names_the_values_compare_takes(tiny_engine_folder):
    from pid_sdk.errors import InputError

    with pytest.raises(InputError) as e:
        compare_folder(tiny_engine_folder, steps=0)
    assert (e.value.expected, e.value.fix) == ("4 (default), or 1, 2, 3, ...", "pass steps=4")


def test_run_parity_judges_at_the_precision_asked_and_decodes_with_the_options_given():
    latent = torch.randn(1, 16, 2, 2, generator=torch.Generator().manual_seed(0))
    a = tiny(0)
    report = run_parity(a, a, latent, precision="bf16", steps=2, latent_sigma=0.3)  # sigma changes the image
    assert [(c.name, c.precision) for c in report.steps] == [("step 1 v", "bf16"), ("step 2 v", "bf16")]
    assert (report.image.name, report.image.precision, report.image.max_abs) == ("image", "bf16", 0.0)
    assert str(report) == "\n".join(str(c) for c in [*report.steps, report.image])


def test_compare_folder_says_what_it_will_do_then_each_result_as_it_ends(tiny_bf16_engine_folder):
    pytest.importorskip("onnxruntime")
    lines = []
    results = compare_folder(tiny_bf16_engine_folder, steps=1, log=lines.append)
    assert lines[0] == ("comparing 2 onnxruntime entries, 1 step each, at 64x96 "
                        "(every size of the folder: --size HxW picks one)")
    assert [line.split("\n")[0] for line in lines[1:]] == [f"== {r.entry}: PASSED" for r in results]
    assert all(0 <= float(line.rsplit("(", 1)[1].removesuffix(" s)")) < 600 for line in lines[1:])
    compare_folder(tiny_bf16_engine_folder, steps=2, sizes=["64x96"], log=lines.append)
    assert lines[3] == "comparing 2 onnxruntime entries, 2 steps each, at 64x96"


def test_the_sizes_announced_are_in_order_of_height_then_width(tiny_engine_folder, tmp_path):
    """A second entry at 128x64 (its graphs are the 64x64 ones: it fails to open, after the announcement)."""
    pytest.importorskip("onnxruntime")
    import json

    from conftest import sealed

    folder = copy_folder(tiny_engine_folder, tmp_path)
    data = json.loads((folder / "manifest.json").read_text())
    data["entries"].append({**data["entries"][0], "bucket": [128, 64]})
    (folder / "manifest.json").write_text(json.dumps(sealed(data)))
    lines = []
    compare_folder(folder, steps=1, log=lines.append)
    assert lines[0] == ("comparing 2 onnxruntime entries, 1 step each, at 64x64, 128x64 "
                        "(every size of the folder: --size HxW picks one)")


def test_a_long_compare_says_how_long_it_takes_at_least():
    from pid_sdk.compare import duration_note
    from pid_sdk.config import PRESETS
    from pid_sdk.flops import matmul_rate
    from pid_sdk.runtime.manifest import Entry

    def entries(*sizes):
        return [Entry("onnx", size, 1, "fp32", {}, {}, {}) for size in sizes]

    five = entries(*PRESETS["pid-2k"].trained_sizes)
    note = duration_note(PRESETS["pid-2k"], five, 4, rate=1e11)
    assert note.startswith("this takes at least ") and note.endswith(" GFLOP/s this machine multiplies matrices "
                                                                    "at): --size HxW compares one size")
    minutes = float(note.split("at least ")[1].split(" min")[0])
    one = duration_note(PRESETS["pid-2k"], five[:1], 4, rate=1e11)
    assert 4 < minutes / float(one.split("at least ")[1].split(" min")[0]) < 6  # five sizes, about five times one
    assert duration_note(PRESETS["tiny"], entries((64, 64)), 4, rate=1e11) == ""  # seconds: nothing to say
    assert 1e8 < matmul_rate() < 1e14
