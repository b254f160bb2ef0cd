"""The training data pipeline: aspect buckets, random and centre crops, the latent of the 4x smaller crop."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pid_sdk.errors import InputError
from training.data import PairSampler, bucket_members, centre_crop, downsample, to_tensor

SQUARE, WIDE, TALL = (64, 64), (64, 128), (128, 64)


def flat(value: int, height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), value, np.uint8)


def pool(rgb: torch.Tensor) -> torch.Tensor:  # any callable stands in for the VAE encoder: [B, 3, H, W] -> latent
    return F.avg_pool2d(rgb, 4)


def test_images_go_to_the_bucket_of_the_nearest_aspect_ratio():
    sizes = [(300, 300), (200, 420), (420, 200), (310, 400), (100, 1000)]
    members = bucket_members(sizes, [SQUARE, (128, 128), WIDE, TALL])
    assert members == {SQUARE: [0, 3], (128, 128): [0, 3], WIDE: [1, 4], TALL: [2]}
    with pytest.raises(InputError, match="No buckets"):
        bucket_members(sizes, [])


def test_each_batch_takes_only_images_of_its_buckets_aspect():
    # One flat colour per aspect ratio: every pixel of a crop says which image it came from
    images = [flat(40, 200, 200), flat(120, 150, 300), flat(200, 300, 150)]
    colour = {SQUARE: 40, WIDE: 120, TALL: 200}
    sampler = PairSampler(images, pool, buckets=[SQUARE, WIDE, TALL], seed=1)
    seen = set()
    for _ in range(12):
        b = sampler.batch(3)
        bucket = tuple(b["image"].shape[-2:])
        seen.add(bucket)
        pixels = ((b["image"] + 1) * 127.5).round()
        assert torch.all((pixels - colour[bucket]).abs() <= 1), bucket
        assert b["latent"].shape == (3, 3, bucket[0] // 16, bucket[1] // 16)
    assert seen == {SQUARE, WIDE, TALL}


def test_a_bucket_without_images_of_its_aspect_is_dropped_with_a_warning():
    with pytest.warns(UserWarning, match="64x128"):
        sampler = PairSampler([flat(9, 100, 100)], pool, buckets=[SQUARE, WIDE])
    assert sampler.buckets == [SQUARE]


def test_centre_crops_and_the_latent_of_the_4x_smaller_crop():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (90, 150, 3), dtype=np.uint8)
    b = PairSampler([img], pool, buckets=[WIDE], crop="centre").batch(2)
    expected = centre_crop(to_tensor(img), *WIDE)
    torch.testing.assert_close(b["image"][0], expected * 2 - 1)
    torch.testing.assert_close(b["image"][1], b["image"][0])  # no random placement, no flips
    torch.testing.assert_close(b["latent"], pool(downsample(expected[None], 4)).expand(2, -1, -1, -1))
    with pytest.raises(InputError, match="Unknown crop"):
        PairSampler([img], pool, buckets=[WIDE], crop="middle")


def test_random_crops_vary_stay_in_range_and_repeat_per_seed():
    img = np.random.default_rng(1).integers(0, 256, (200, 260, 3), dtype=np.uint8)
    a = PairSampler([img], pool, buckets=[SQUARE], seed=5).batch(6)["image"]
    b = PairSampler([img], pool, buckets=[SQUARE], seed=5).batch(6)["image"]
    c = PairSampler([img], pool, buckets=[SQUARE], seed=6).batch(6)["image"]
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    assert len({tuple(x.flatten()[:50].tolist()) for x in a}) > 1  # distinct views of one image
    assert a.min() >= -1 and a.max() <= 1
