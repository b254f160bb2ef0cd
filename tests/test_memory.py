"""The memory estimate against measured peaks (the profiler's count of the tensors a decode allocates), and
`max_memory=`: the windows and batching it chooses, the peak it keeps to, the decodes it refuses."""

from dataclasses import replace

import pytest
import torch

import pid_sdk
from bench.memory import peak_bytes
from pid_sdk.checkpoints import LoadedModel
from pid_sdk.config import get_preset
from pid_sdk.errors import CheckpointError, InputError
from pid_sdk.memory import estimate_memory, parse_memory
from pid_sdk.model import build_model, randomize

pytest.importorskip("torch.profiler._memory_profiler", reason="the CPU peak is read from the profiler's timeline")
# Two steps: every step's peak is alike, and the second re-noises (the sampler's moment holds its noise).


def decoder(trained=((64, 64),), **backbone) -> pid_sdk.Decoder:
    cfg = get_preset("tiny")
    cfg = replace(cfg, trained_sizes=trained, backbone=replace(cfg.backbone, **backbone))
    return pid_sdk.Decoder.from_model(LoadedModel(randomize(build_model(cfg), 0), cfg, "random", "test", []))


def latent(side: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 16, side // 32, side // 32, generator=torch.Generator().manual_seed(seed))


def measured_over_estimate(dec, side: int, window=None) -> float:
    z = latent(side)
    measured = peak_bytes(lambda: dec.decode(z, window=window, windows_per_call=1, steps=2))
    est = dec.estimate_memory(side, side, window=window)
    return measured / (est.total - est.weights)


@pytest.mark.parametrize("backbone", [{}, {"pixel_hidden_size": 8}, {"pixel_hidden_size": 32},
                                      {"pixel_mlp_ratio": 2.0}, {"hidden_size": 256, "num_heads": 4}])
def test_the_estimate_matches_the_measured_peak_of_a_whole_decode(backbone):
    ratio = measured_over_estimate(decoder(**backbone), 256)
    assert 0.95 < ratio < 1.1, ratio


def test_the_estimate_matches_the_measured_peak_of_a_windowed_decode_and_it_does_not_grow_with_the_output():
    """At 128x128 outputs and below the tiny model's fixed costs (a few MB) pass the 5% the scaling terms leave."""
    dec = decoder()
    ratios = [measured_over_estimate(dec, side, window) for side, window in [(256, (128, 128)), (384, (128, 128))]]
    assert all(0.95 < r < 1.1 for r in ratios), ratios
    small, large = (estimate_memory(dec.config, 1000, s, s, window=(64, 64)) for s in (128, 512))
    assert small.activations == large.activations == estimate_memory(dec.config, 1000, 64, 64).activations
    assert large.sampler > 15 * small.sampler and large.image_state > 15 * small.image_state


def test_the_estimate_counts_the_pixel_blocks_that_set_the_peak():
    """The earlier estimate counted 10 values a pixel and fell 35% short of the measured peak: the check fails."""
    dec = decoder()
    low = replace(dec.config, backbone=replace(dec.config.backbone, pixel_mlp_ratio=1.5))  # 10 values a pixel
    z = latent(256)
    measured = peak_bytes(lambda: dec.decode(z, steps=2))
    est = estimate_memory(low, 0, 256, 256, activation_bytes=4)
    assert measured / (est.activations + est.image_state) > 1.3


def test_max_memory_chooses_the_largest_window_that_fits_and_the_decode_keeps_to_it():
    dec = decoder(trained=((64, 64), (128, 128)))
    z = latent(192)
    fits_64 = dec.estimate_memory(192, 192, window=(64, 64)).total
    fits_128 = dec.estimate_memory(192, 192, window=(128, 128)).total
    budget = (fits_64 + fits_128) // 2
    with pytest.warns(UserWarning, match=r"decoding 192x192 as 25 windows of 64x64: its whole-image decode"):
        image = dec.decode(z, steps=2, max_memory=budget, windows_per_call=1)
    assert torch.equal(image, dec.decode(z, steps=2, window=(64, 64)))
    weights = dec.estimate_memory(192, 192).weights  # held before the decode: not in the measured peak
    assert peak_bytes(lambda: dec.decode(z, steps=2, max_memory=budget, windows_per_call=1)) + weights <= budget
    assert torch.equal(dec.decode(z, steps=2, max_memory=fits_128, window="auto", windows_per_call=1),
                       dec.decode(z, steps=2, window=(128, 128)))


def test_a_whole_image_that_fits_stays_whole_and_the_budget_may_be_set_at_load():
    dec = decoder(trained=((64, 64), (128, 128)))
    z = latent(128)
    dec.max_memory = dec.estimate_memory(128, 128).total
    assert torch.equal(dec.decode(z, steps=2), dec.decode(z, steps=2, max_memory=10**12))
    with pytest.warns(UserWarning, match="as 1 window of 128x128|as 9 windows of 64x64"):
        dec.decode(z, steps=2, max_memory=dec.max_memory - 1)
    assert pid_sdk.Decoder.load(preset="tiny", max_memory="2GiB").max_memory == 2 * 2**30


def test_windows_per_call_auto_stacks_as_many_windows_as_the_budget_allows():
    dec = decoder()
    z = latent(256)
    two = dec.estimate_memory(256, 256, window=(64, 64), windows_per_call=2).total
    calls = []
    original = dec._step
    def spy(windows, blend, per_call, **kw):  # the real step, its windows per call noted
        calls.append(per_call)
        return original(windows, blend, per_call, **kw)

    dec._step = spy
    one_by_one = dec.decode(z, steps=2, window=(64, 64))
    stacked = dec.decode(z, steps=2, window=(64, 64), max_memory=two)
    assert calls == [1, 2]
    torch.testing.assert_close(stacked, one_by_one, rtol=0, atol=1e-4)


def test_a_decode_that_cannot_fit_is_refused_with_what_it_needs():
    dec = decoder()
    need = dec.estimate_memory(256, 256, window=(64, 64)).total
    with pytest.raises(InputError, match=r"needs more memory than max_memory allows") as err:
        dec.decode(latent(256), max_memory=need - 1)
    message = str(err.value)
    assert "at least" in message and "windows of 64x64" in message and "raise max_memory" in message
    with pytest.raises(InputError, match=r"windows of 64x64, 4 per call"):
        dec.decode(latent(256), window=(64, 64), windows_per_call=4, max_memory=need + 1)


@pytest.mark.parametrize("text,expected", [("8GiB", 8 * 2**30), ("512 MiB", 512 * 2**20), ("24GB", 24 * 10**9),
                                           ("1.5gib", 3 * 2**29), (4096, 4096), ("1000", 1000)])
def test_memory_amounts_are_read_as_people_write_them(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("bad", ["8 potatoes", "-1GiB", "0", 0, -5, True, 2.5, None, "GiB"])
def test_a_memory_amount_that_is_not_one_is_refused_with_the_fix(bad):
    with pytest.raises(InputError, match="max_memory takes an amount of memory") as err:
        parse_memory(bad)
    assert "max_memory=16GiB" in str(err.value)


def test_a_bad_budget_is_refused_before_loading_anything(tmp_path):
    with pytest.raises(InputError, match="max_memory"):
        pid_sdk.Decoder.load(tmp_path / "missing.safetensors", max_memory="lots")
    with pytest.raises(CheckpointError):  # a good budget: the missing file is what is refused
        pid_sdk.Decoder.load(tmp_path / "missing.safetensors", max_memory="1GiB")


def test_the_cli_keeps_to_max_memory_and_refuses_what_cannot_fit(tmp_path, capsys):
    from safetensors.torch import save_file

    from pid_sdk.cli import main

    save_file({"latent": latent(192)[0]}, str(tmp_path / "z.safetensors"))
    args = ["decode", str(tmp_path / "z.safetensors"), "--preset", "tiny", "--quiet", "--steps", "1"]
    with pytest.warns(UserWarning, match="decoding 192x192 as 25 windows of 64x64"):
        assert main([*args, "-o", str(tmp_path / "w.png"), "--max-memory", "20MiB"]) == 0
    assert main([*args, "-o", str(tmp_path / "tight.png"), "--max-memory", "1MiB"]) == 2
    err = capsys.readouterr().err
    assert "needs more memory than max_memory allows" in err and not (tmp_path / "tight.png").exists()
    assert main([*args, "-o", str(tmp_path / "bad.png"), "--max-memory", "lots"]) == 2
    assert "pass --max-memory 16GiB" in capsys.readouterr().err
