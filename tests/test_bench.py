"""The latency harness at test size on the CPU: the same code the GPU run uses (bench/latency.py --tiny)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pid_sdk.config import PRESETS
from pid_sdk.flops import decode_flops

ROOT = Path(__file__).resolve().parents[1]


def load_bench(name="latency"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_harness_writes_json_and_markdown(tmp_path):
    bench = load_bench()
    out_json, out_md = tmp_path / "lat.json", tmp_path / "lat.md"
    assert bench.main(["--tiny", "--modes", "reference", "fp8", "fast-cudnn", "--sizes", "64", "--runs", "2",
                       "--warmup", "1", "--json", str(out_json), "--markdown", str(out_md)]) == 0
    result = json.loads(out_json.read_text())
    measured = [r for r in result["rows"] if "median_ms" in r]
    assert [r["mode"] for r in measured] == ["reference", "fp8 (no CUDA graphs on the CPU)"]
    flops = decode_flops(PRESETS["tiny"], 64, 64).per_decode
    for row in measured:
        assert row["runs"] == 2 and row["min_ms"] <= row["median_ms"] <= row["max_ms"]
        assert abs(row["tflops_per_s"] - flops / (row["median_ms"] / 1000) / 1e12) < 1e-9
        assert row["attention"] == "flash (CPU) x16"  # 3 MM-DiT + 1 PiT attention, 4 steps
        parity = row["image_vs_bf16"]  # against the same decode in eager bf16
        assert parity["within_fp8_row"] and 0 < parity["mean_abs"] < 0.06 and parity["cosine"] > 0.99
    assert {"mode": "fast-cudnn", "skipped": "cuDNN attention needs CUDA"} in result["rows"]
    assert "| reference | 64x64 |" in out_md.read_text()


def test_windowed_rows_count_the_windows_flops(tmp_path):
    bench = load_bench()
    out_json, out_md = tmp_path / "lat.json", tmp_path / "lat.md"
    assert bench.main(["--tiny", "--modes", "reference", "--sizes", "64", "--windowed", "128:64", "--runs", "1",
                       "--warmup", "1", "--json", str(out_json), "--markdown", str(out_md)]) == 0
    rows = json.loads(out_json.read_text())["rows"]
    assert [(r["size"], r.get("window")) for r in rows] == [(64, None), (128, 64)]
    flops = decode_flops(PRESETS["tiny"], 128, 128, window=(64, 64), overlap=32).per_decode
    one = decode_flops(PRESETS["tiny"], 64, 64)
    assert flops == 9 * (one.per_decode + 3 * sum(one.once.values()))  # 3 x 3 windows (tiny's cell: 32 px)
    assert abs(rows[1]["tflops_per_s"] - flops / (rows[1]["median_ms"] / 1000) / 1e12) < 1e-9
    assert rows[1]["attention"] == "flash (CPU) x144"  # 4 attentions x 4 steps x 9 windows
    assert "| reference | 128x128 in 64x64 windows |" in out_md.read_text()


def test_budget_skips_what_would_not_finish(tmp_path):
    bench = load_bench()
    out = tmp_path / "lat.json"
    bench.main(["--tiny", "--modes", "reference", "--sizes", "64", "128", "--runs", "1", "--warmup", "0",
                "--budget-s", "0", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert rows == [{"mode": "reference", "skipped": "time budget (0 s) spent"}]  # no model built, nothing timed


def test_quality_report_at_native_resolution(tmp_path, tae_dir):
    """bench/quality.py on a seeded random tiny model: one held-out image at its own resolution (chelsea is
    451x300, so a 288x288 reference, never an upscaled one), the two baselines and three latent_sigma decodes."""
    from pid_sdk import save_artefact
    from pid_sdk.model import build_model, randomize

    cfg = PRESETS["tiny"]
    save_artefact(randomize(build_model(cfg), 0), cfg, tmp_path / "model", latent_space="flux1")
    quality = load_bench("quality")
    assert quality.main(["--model", str(tmp_path / "model"), "--images", "skimage.chelsea", "--out",
                         str(tmp_path / "q")]) == 0
    rows = json.loads((tmp_path / "q" / "quality.json").read_text())
    assert [r["size"] for r in rows] == [288] * 5
    assert [r["method"] for r in rows][:2] == ["taef1 + bicubic x4", "taef1 + Lanczos x4"]
    bicubic, random_model = rows[0], rows[2]
    assert bicubic["psnr"] > 20 > random_model["psnr"]  # the metric tells a real decode from noise
    assert {"piqe", "piqe_shifted", "seams"} <= set(bicubic)
    assert (tmp_path / "q" / "comparison.jpg").stat().st_size > 0


def test_seam_ratio_finds_a_16_pixel_grid_at_any_phase():
    """Flat 16-pixel patches of random grey levels have all their steps on the grid, at whatever offset; so has a grid
    of one-pixel lines (edges moved off the grid lines); noise has none."""
    seam_ratio = load_bench("quality").seam_ratio
    rng = np.random.default_rng(0)
    noise = rng.random((128, 128, 3))
    patches = np.kron(rng.integers(0, 256, (8, 8)), np.ones((16, 16)))[..., None] + noise
    lines = 128 + 20 * noise
    lines[7::16] += 40
    lines[:, 7::16] += 40
    assert seam_ratio(patches) > 20 and seam_ratio(patches[5:, 9:]) > 20
    assert seam_ratio(lines) > 3
    assert 0.9 < seam_ratio(255 * noise) < 1.1


def test_denoise_by_sigma_measures_the_one_call_prediction(tmp_path, tae_dir):
    """On a random tiny model: at sigma 0.01 x - sigma v is the noised image itself (high PSNR), at 0.999 it is
    noise; the low-frequency column is computed on the same predictions."""
    from pid_sdk import save_artefact
    from pid_sdk.model import build_model, randomize

    cfg = PRESETS["tiny"]
    save_artefact(randomize(build_model(cfg), 0), cfg, tmp_path / "model", latent_space="flux1")
    bench = load_bench("denoise_by_sigma")
    out = tmp_path / "by_sigma.json"
    assert bench.main(["--model", str(tmp_path / "model"), "--images", "skimage.chelsea", "--sigmas", "0.999",
                       "0.01", "--json", str(out)]) == 0
    high, low = json.loads(out.read_text())["skimage.chelsea"]
    assert low["psnr"] > 30 > 15 > high["psnr"]
    assert low["psnr_8x_down"] > low["psnr"]  # box-averaging removes most of the remaining noise


def test_psnr_by_scale_separates_fine_from_coarse_error(tmp_path, tae_dir):
    """Fine (checkerboard) error vanishes after a 2x box average, coarse (constant) error does not; end to end on a
    random tiny model, the baseline's error shrinks as the scale coarsens."""
    from pid_sdk import save_artefact
    from pid_sdk.model import build_model, randomize

    bench = load_bench("psnr_by_scale")
    ref = torch.zeros(1, 3, 8, 8)
    checker = ((torch.arange(8)[:, None] + torch.arange(8)[None]).remainder(2).float() * 0.2 - 0.1).expand(1, 3, 8, 8)
    fine, coarse = bench.psnr_by_scale(checker, ref, [1, 2]), bench.psnr_by_scale(ref + 0.1, ref, [1, 2])
    assert fine[0] == pytest.approx(26.02, abs=0.01) and fine[1] > 60
    assert coarse == pytest.approx([26.02, 26.02], abs=0.01)
    cfg = PRESETS["tiny"]
    save_artefact(randomize(build_model(cfg), 0), cfg, tmp_path / "model", latent_space="flux1")
    out = tmp_path / "by_scale.json"
    assert bench.main(["--model", str(tmp_path / "model"), "--images", "skimage.chelsea", "--factors", "1", "4", "16",
                       "--samples", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["skimage.chelsea"]
    assert set(rows) == {"taef1 + bicubic x4", "PiD, seed 0", "PiD, mean of 2"}
    bicubic = rows["taef1 + bicubic x4"]
    assert bicubic[0] < bicubic[1] < bicubic[2]


def test_generalisation_gap_compares_two_groups_of_images(tmp_path, tae_dir):
    """bench/generalisation.py on a random tiny model: the same two photographs as 'seen' and 'unseen' give a
    generalisation gap of exactly 0 (the decode is seeded), a real photograph against noise is told apart, and an
    empty folder is refused with a message rather than a traceback."""
    from skimage import data

    from pid_sdk import save_artefact
    from pid_sdk.model import build_model, randomize

    cfg = PRESETS["tiny"]
    save_artefact(randomize(build_model(cfg), 0), cfg, tmp_path / "model", latent_space="flux1")
    for group in ("a", "b"):
        (tmp_path / group).mkdir()
        Image.fromarray(data.coffee()[:96, :128]).save(tmp_path / group / "coffee.png")
        Image.fromarray(data.astronaut()[:128, :96]).save(tmp_path / group / "astronaut.png")
    bench = load_bench("generalisation")
    out = tmp_path / "gap.json"
    assert bench.main(["--model", str(tmp_path / "model"), "--seen", str(tmp_path / "a"), "--unseen",
                       str(tmp_path / "b"), "--json", str(out), "--markdown", str(tmp_path / "gap.md")]) == 0
    result = json.loads(out.read_text())
    assert [(r["group"], r["image"], r["size"]) for r in result["rows"]] == [
        ("seen", "astronaut", 96), ("seen", "coffee", 96), ("unseen", "astronaut", 96), ("unseen", "coffee", 96)]
    for r in result["rows"]:
        assert r["gap"] == pytest.approx(r["pid_psnr"] - r["bicubic_psnr"])
        assert r["bicubic_psnr"] > 20 > r["pid_psnr"]  # a random model is far below the baseline
    assert result["means"]["seen"] == pytest.approx(np.mean([r["gap"] for r in result["rows"][:2]]))
    assert result["means"]["generalisation_gap"] == 0.0
    assert "generalisation gap (seen minus unseen): +0.00 dB" in (tmp_path / "gap.md").read_text()
    (tmp_path / "empty").mkdir()
    assert bench.main(["--model", str(tmp_path / "model"), "--seen", str(tmp_path / "empty"), "--limit", "1"]) == 2


def test_generalisation_refuses_unseen_photographs_that_are_not_installed(tmp_path, tae_dir, monkeypatch, capsys):
    from pid_sdk import save_artefact
    from pid_sdk.model import build_model, randomize

    cfg = PRESETS["tiny"]
    save_artefact(randomize(build_model(cfg), 0), cfg, tmp_path / "model", latent_space="flux1")
    bench = load_bench("generalisation")

    def absent():
        raise FileNotFoundError("/usr/share/doc/nothing")

    monkeypatch.setattr(bench, "MORE_SOURCES", (("a missing source", "apt-get install nothing", absent),))
    (tmp_path / "seen").mkdir()
    from skimage import data

    Image.fromarray(data.coffee()[:96, :96]).save(tmp_path / "seen" / "coffee.png")
    assert bench.main(["--model", str(tmp_path / "model"), "--seen", str(tmp_path / "seen"), "--unseen", "more"]) == 2
    err = capsys.readouterr().err
    assert "a missing source" in err and "apt-get install nothing" in err


@pytest.mark.parametrize("name, kind", [
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64", "attention"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>>", "attention"),
    ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80", "attention"),
    ("nvjet_tst_192x192_64x4_1x2_h_bz_coopA_NNT", "matmul"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
    ("aten::addmm", "matmul"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("triton_red_fused__rms_norm_0", "norm"),
    ("triton_poi_fused_add_mul_silu_3", "other"),
])
def test_kernel_kinds_from_names(name, kind):
    assert load_bench("kernel_time").kind_of(name) == kind


def test_breakdown_adds_up_the_profiled_decode(tmp_path):
    bench = load_bench()
    out_json, out_md = tmp_path / "lat.json", tmp_path / "lat.md"
    bench.main(["--tiny", "--modes", "eager", "--sizes", "64", "--runs", "1", "--warmup", "1",
                "--breakdown-sizes", "64", "--json", str(out_json), "--markdown", str(out_md)])
    (row,) = json.loads(out_json.read_text())["rows"]
    kinds = row["breakdown"]["kinds"]
    assert kinds["attention"] > 0 and kinds["matmul"] > 0  # 16 SDPA calls and every linear layer were seen
    assert abs(sum(kinds.values()) - row["breakdown"]["total_ms"]) < 1e-6
    assert "| eager | 64x64 | " in out_md.read_text().split("by kind")[1]


def test_a_run_cut_short_keeps_what_it_measured(tmp_path, monkeypatch):
    bench = load_bench()
    measure = bench.measure

    def fail_at_128(dec, side, *args, **kwargs):
        if side == 128:
            raise KeyboardInterrupt  # as a run stopped at its time limit
        return measure(dec, side, *args, **kwargs)

    monkeypatch.setattr(bench, "measure", fail_at_128)
    out = tmp_path / "lat.json"
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--tiny", "--modes", "eager", "--sizes", "64", "128", "--runs", "1", "--warmup", "0",
                    "--json", str(out)])
    assert [r["size"] for r in json.loads(out.read_text())["rows"]] == [64]


def test_attention_bench_times_the_decode_shapes(tmp_path):
    out = tmp_path / "attention.json"
    assert load_bench("attention").main(["--tiny", "--runs", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["shape"], r["layout"]) for r in rows] == [
        ("MM-DiT", "model"), ("MM-DiT", "contiguous"), ("MM-DiT", "split"), ("PiT", "model"), ("PiT", "contiguous"),
        ("MM-DiT padded to 256", "model"), ("MM-DiT FLOPs, heads of 128", "model")]
    mmdit = rows[0]
    assert (mmdit["heads"], mmdit["tokens"], mmdit["head_dim"]) == (24, (256 // 16) ** 2 + 300, 64)
    assert rows[5]["tokens"] % 256 == 0 and rows[5]["tokens"] >= mmdit["tokens"]
    for r in rows:
        flops = 4 * r["tokens"] ** 2 * r["heads"] * r["head_dim"]
        assert abs(r["tflops_per_s"] - flops / r["ms"] / 1e9) < 1e-9 and r["profiled_attention_ms"] > 0
        calls = 4 if r["layout"] == "split" else 1  # image and text queries, each against image and text keys
        assert r["profiler_events"]["aten::_scaled_dot_product_flash_attention_for_cpu (DeviceType.CPU)"] == calls


def test_full_size_onnx_check_at_test_size(tmp_path, monkeypatch, capsys):
    """bench/full_size_onnx.py on the tiny preset: both precisions exported, run by ONNX Runtime and judged."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "rows.json"
    monkeypatch.setattr("sys.argv", ["full_size_onnx.py", "--preset", "tiny", "--size", "64x64", "--out", str(out)])
    load_bench("full_size_onnx").main()
    rows = json.loads(out.read_text())
    assert [(e["entry"], e["status"]) for e in rows["entries"]] == [("onnx:-:64x64:b1:fp32", "passed"),
                                                                    ("onnx:-:64x64:b1:bf16", "passed")]
    assert rows["entries"][1]["image"]["precision"] == "bf16-twin" and len(rows["entries"][0]["steps"]) == 4
    assert rows["phases"]["compare"]["peak_rss_gib"] > 0 and "2 passed" in capsys.readouterr().out


def test_a_failing_mode_is_a_row_and_the_run_goes_on(tmp_path, monkeypatch):
    bench = load_bench()
    real = bench.measure

    def measure(dec, side, *args):
        if dec.runtime.speed.compile:
            raise RuntimeError("no kernel for this shape\nsecond line")
        return real(dec, side, *args)

    monkeypatch.setattr(bench, "measure", measure)
    out = tmp_path / "lat.json"
    assert bench.main(["--tiny", "--modes", "compile", "reference", "--sizes", "64", "--runs", "1", "--warmup", "0",
                       "--no-parity", "--json", str(out)]) == 0
    failed, measured = json.loads(out.read_text())["rows"]
    assert failed == {"mode": "compile", "size": 64, "failed": "RuntimeError: no kernel for this shape"}
    assert measured["mode"] == "reference" and measured["median_ms"] > 0 and "image_vs_bf16" not in measured


def test_attention_parity_report_at_test_size(tmp_path):
    """bench/attention_parity.py on random weights: the FP8 attention arithmetic and the split attention, judged."""
    out = tmp_path / "parity.json"
    assert load_bench("attention_parity").main(["--side", "64", "--no-demo", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [r["setting"] for r in rows] == ["fp8 attention (cuDNN arithmetic)", "fp8 attention, per-head scales",
                                           "split attention"]
    fp8, per_head, split = rows
    for row in fp8, per_head:
        assert row["passed"] and row["image"]["precision"] == "fp8" and row["image"]["max_abs"] > 1e-3
    assert per_head["image"] != fp8["image"]
    assert [r["scales"] for r in report["head_skew"]] == ["per tensor", "per head"]
    assert all(0 < r["median_head_rel"] <= r["worst_head_rel"] < 0.5 for r in report["head_skew"])
    assert split["passed"] and split["image"]["precision"] == "fp32" and split["image"]["max_abs"] < 1e-4
    assert len(fp8["steps"]) == 4


def test_the_window_seam_measure_sees_a_step_on_a_window_edge_and_nothing_on_a_smooth_image():
    bench = load_bench("windows")
    assert bench.window_edges(1024, 1024, 512, 128) == ([384, 512, 896], [384, 512, 896])  # 3 x 3 windows
    assert bench.window_edges(512, 512, 512, 128) == ([], [])  # one window: no inner edge
    rng = np.random.default_rng(0)
    texture = rng.integers(100, 140, (64, 96, 3)).astype(np.uint8)
    assert 0.8 < bench.seam_ratio(texture, [32], [48]) < 1.2  # an edge like any other line
    stepped = texture.copy()
    stepped[:, 48:] += 60  # what a window with another colour leaves
    assert bench.seam_ratio(stepped, [], [48]) > 3
    assert bench.grid_lines(64, [32]) == [16, 48]
    scores = bench.score(stepped, texture, ([], [48]))
    assert scores["seams"] > 3 and scores["grid"] < 1.5 and scores["psnr"] < 20
