"""Windowed decoding (pid_sdk/windows.py): the plan covers the output, the weights sum to one, a single window is the
whole-image decode bit for bit, and an engine folder of one bucket decodes other sizes through its windows."""

import pytest
import torch

import pid_sdk
from pid_sdk.compare import compare
from pid_sdk.errors import InputError
from pid_sdk.windows import Window, blend_weights, plan_windows


def latent(h: int, w: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 16, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny():
    return pid_sdk.Decoder.load(preset="tiny")


@pytest.mark.parametrize("height,width,window,overlap", [(64, 160, (64, 64), 32), (128, 128, (64, 64), 32),
                                                         (96, 224, (64, 96), 32), (64, 64, (64, 64), 0)])
def test_the_windows_cover_the_output_and_their_weights_sum_to_one(height, width, window, overlap):
    windows = plan_windows(height, width, window, overlap)
    total = torch.zeros(height, width, dtype=torch.float64)
    for w, weight in zip(windows, blend_weights(windows, height, width)):
        assert (w.height, w.width) == window and w.top + w.height <= height and w.left + w.width <= width
        assert weight.shape == (w.height, w.width) and weight.min() > 0
        total[w.top:w.top + w.height, w.left:w.left + w.width] += weight.double()
    torch.testing.assert_close(total, torch.ones(height, width, dtype=torch.float64), rtol=0, atol=1e-6)


def test_windows_step_by_window_minus_overlap_and_the_last_sits_on_the_far_edge():
    assert [(w.top, w.left) for w in plan_windows(64, 160, (64, 64), 32)] == [(0, 0), (0, 32), (0, 64), (0, 96)]
    assert [w.left for w in plan_windows(64, 224, (64, 96), 32)] == [0, 64, 128]
    assert plan_windows(64, 64, (64, 64), 32) == [Window(0, 0, 64, 64)]


def test_a_window_weighs_its_shared_sides_less_than_its_middle_and_its_image_edges_fully():
    left, right = blend_weights(plan_windows(64, 96, (64, 64), 32), 64, 96)
    assert left[:, 0].eq(1).all() and right[:, -1].eq(1).all()  # image edges: the only window there
    assert (left[:, 40] > right[:, 8]).all() and (left[:, 60] < right[:, 28]).all()  # image columns 40, 60


def test_a_single_window_is_the_whole_image_decode_bit_for_bit(tiny):
    z = latent(2, 3)
    assert torch.equal(tiny.decode(z, window=(64, 96)), tiny.decode(z))
    assert torch.equal(tiny.decode(z, window=(128, 128)), tiny.decode(z))  # a window larger than the output


def test_a_windowed_decode_is_reproducible_and_each_seed_is_its_own(tiny):
    z = latent(2, 5, batch=2)
    first = tiny.decode(z, window=(64, 64), seed=[3, 4])
    assert torch.equal(first, tiny.decode(z, window=(64, 64), seed=[3, 4]))
    alone = tiny.decode(z[1:], window=(64, 64), seed=4)
    torch.testing.assert_close(first[1:], alone, rtol=0, atol=1e-4)
    assert first.shape == (2, 3, 64, 160) and torch.isfinite(first).all()
    assert not torch.equal(first, tiny.decode(z))  # the windows are not the whole image


def test_windows_stacked_in_one_call_give_the_windows_decoded_one_by_one(tiny):
    z = latent(3, 5, seed=4, batch=2)
    one_by_one = tiny.decode(z, window=(64, 64), seed=[1, 2])
    for per_call in (2, 3, 8):  # 8 windows: calls of 2, of 3 + 3 + 2, and all at once
        stacked = tiny.decode(z, window=(64, 64), seed=[1, 2], windows_per_call=per_call)
        torch.testing.assert_close(stacked, one_by_one, rtol=0, atol=1e-4)  # batched GEMMs round differently
    assert not torch.allclose(tiny.decode(z, window=(64, 64), seed=[2, 1], windows_per_call=3), one_by_one,
                              atol=1e-2)  # a check that sees the seeds swapped
    with pytest.raises(InputError, match="windows_per_call must be an integer"):
        tiny.decode(z, window=(64, 64), windows_per_call=0)


def test_auto_takes_the_largest_trained_size_that_fits(tiny):
    z = latent(2, 5)
    assert torch.equal(tiny.decode(z, window="auto"), tiny.decode(z, window=(64, 64)))  # tiny: trained at 64x64
    assert torch.equal(tiny.decode(latent(2, 2), window="auto"), tiny.decode(latent(2, 2)))


@pytest.mark.parametrize("kwargs,match", [
    (dict(window=(50, 64)), "window= takes \\(height, width\\) in output pixels"),
    (dict(window="big"), "window= takes"),
    (dict(window=(64, 64), overlap=16), "overlap= takes output pixels"),
    (dict(window=(64, 64), overlap=64), "overlap= takes output pixels"),
    (dict(overlap=32), "overlap= applies to windowed decoding only"),
])
def test_bad_window_arguments_are_refused_with_the_fix(tiny, kwargs, match):
    with pytest.raises(InputError, match=match) as e:
        tiny.decode(latent(2, 5), **kwargs)
    assert e.value.fix


def test_the_teacher_sampler_runs_through_windows_too(tiny):
    z = latent(2, 3)
    whole = tiny.decode(z, sampler="teacher", steps=2, guidance=1.0)
    assert torch.equal(tiny.decode(z, sampler="teacher", steps=2, guidance=1.0, window=(64, 96)), whole)
    assert tiny.decode(z, sampler="teacher", steps=2, guidance=1.0, window=(64, 64)).shape == whole.shape


def test_an_engine_folder_of_one_bucket_decodes_other_sizes_through_its_windows(tiny_engine_folder):
    pytest.importorskip("onnxruntime")
    from pid_sdk.errors import ConfigError

    onnx = pid_sdk.Decoder.load(tiny_engine_folder, backend="onnxruntime")
    torch_ref = pid_sdk.Decoder.load(tiny_engine_folder, backend="pytorch")
    z = latent(3, 5, seed=2)
    image = onnx.decode(z, window="auto")
    result = compare("image", image, torch_ref.decode(z, window=(64, 64)), "fp32")
    assert image.shape == (1, 3, 96, 160) and result.passed, str(result)
    assert not compare("image", image, torch_ref.decode(z, window=(64, 64), seed=1), "fp32").passed  # control
    with pytest.raises(ConfigError, match="No onnxruntime engine for a 32x96 output"):  # no bucket fits inside
        onnx.decode(latent(1, 3))


def test_a_size_the_folder_lacks_decodes_through_its_buckets_and_says_so_once(tiny_engine_folder):
    pytest.importorskip("onnxruntime")
    import warnings

    onnx = pid_sdk.Decoder.load(tiny_engine_folder, backend="onnxruntime")
    z = latent(3, 5, seed=2)
    with pytest.warns(UserWarning, match=r"decoding 96x160 as 8 windows of 64x64: .* has no engine of 96x160 \(pid-sdk "
                                         r"export .* --size 96x160 adds a whole-image engine\)"):
        first = onnx.decode(z)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per size
        assert torch.equal(onnx.decode(z), first)
    assert torch.equal(first, onnx.decode(z, window="auto"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        onnx.decode(latent(2, 2))  # the bucket itself: the whole-image engine, no warning


def test_a_whole_image_larger_than_the_trained_sizes_warns_with_the_windowed_fix(tiny):
    import warnings

    with pytest.warns(UserWarning, match=r"128x128 is larger than any size tiny was trained at "
                                         r"\(largest 64x64\).*window='auto'"):
        tiny.decode(latent(4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny.decode(latent(4, 4), window="auto")  # windows of trained sizes: nothing to warn about
        tiny.decode(latent(2, 2))
        tiny.decode(latent(2, 1))  # smaller than trained: no drift to warn of


def test_the_cli_decodes_through_windows(tmp_path, capsys):
    from PIL import Image
    from safetensors.torch import save_file

    from pid_sdk.cli import main

    save_file({"latent": latent(2, 5)[0]}, str(tmp_path / "z.safetensors"))
    args = ["decode", str(tmp_path / "z.safetensors"), "--preset", "tiny", "--quiet"]
    assert main([*args, "-o", str(tmp_path / "w.png"), "--window", "64x64", "--overlap", "32"]) == 0
    assert main([*args, "-o", str(tmp_path / "a.png"), "--window", "auto"]) == 0
    assert Image.open(tmp_path / "w.png").size == (160, 64)
    assert (tmp_path / "w.png").read_bytes() == (tmp_path / "a.png").read_bytes()
    assert main([*args, "-o", str(tmp_path / "bad.png"), "--window", "wide"]) == 2
    assert "--window takes HxW or auto." in capsys.readouterr().err and not (tmp_path / "bad.png").exists()


def test_compare_judges_a_folders_windowed_decode_step_by_step(tiny_engine_folder, capsys):
    pytest.importorskip("onnxruntime")
    from pid_sdk.cli import main
    from pid_sdk.compare import compare_folder

    whole, windowed = compare_folder(tiny_engine_folder, steps=2, seed=3, windowed=["96x160"])
    assert whole.entry == "onnx:-:64x64:b1:fp32" and windowed.entry == "onnx:-:64x64:b1:fp32, 96x160 as its windows"
    assert windowed.status == "passed" and len(windowed.report.steps) == 2
    assert all(0 < c.max_abs < 1e-3 for c in windowed.report.steps)  # velocities of two real, different runs
    assert windowed.report.image.max_abs != whole.report.image.max_abs
    assert main(["compare", str(tiny_engine_folder), "--steps", "1", "--windowed", "96x160"]) == 0
    out = capsys.readouterr().out
    assert "== onnx:-:64x64:b1:fp32, 96x160 as its windows: PASSED" in out and "2 passed, 0 failed" in out
    assert main(["compare", str(tiny_engine_folder), "--windowed", "100x160"]) == 2
    assert "100x160 is not a whole number of latent cells" in capsys.readouterr().err
