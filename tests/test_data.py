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


def _views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rotations and mirror images of a square [3, H, W] crop, each with its channels in all 6 orders."""
    turns = [x, x.transpose(-1, -2)]
    turns += [t.flip(-2) for t in turns] + [t.flip(-1) for t in turns] + [t.flip(-1).flip(-2) for t in turns]
    orders = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    return [t[list(o)] for t in turns for o in orders]


def test_augmented_crops_are_turned_mirrored_and_recoloured_views_of_the_same_crop():
    from training.data import augmented

    x = torch.rand(3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(400):
        y = augmented(x, gen)
        match = [i for i, v in enumerate(_views(x)) if torch.equal(v, y)]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) == 24  # turned or not, upside down or not, any channel order (random_crop adds the mirror)
    wide = augmented(torch.rand(3, 4, 8), torch.Generator().manual_seed(1))
    assert wide.shape == (3, 4, 8)  # a crop that is not square is never turned


def test_the_sampler_augments_only_when_asked_and_from_the_same_crop():
    img = np.random.default_rng(2).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    plain = PairSampler([img], pool, buckets=[SQUARE], seed=3).batch(1)["image"][0]
    again = PairSampler([img], pool, buckets=[SQUARE], seed=3).batch(1)["image"][0]
    torch.testing.assert_close(plain, again)
    views = [PairSampler([img], pool, buckets=[SQUARE], seed=3, augment=True).batch(1)["image"][0]
             for _ in range(2)]
    torch.testing.assert_close(views[0], views[1])  # reproducible per seed
    assert any(torch.equal(v, views[0]) for v in _views(plain))  # the first crop's place, then turned or recoloured


def _write(path, width, height, colour):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), colour).save(path)


def test_wallpapers_come_from_their_largest_file_shrunk_to_the_pools_scale(monkeypatch, tmp_path):
    """Debian's wallpapers ship at several sizes up to 5120 px: the largest is read and its shorter side brought to
    WALLPAPER_SIDE (a small one is kept as it is); only the listed photographs are taken."""
    from training import data

    plasma, mate = tmp_path / "wallpapers", tmp_path / "mate"
    _write(plasma / "Lake" / "contents" / "images" / "1280x800.png", 1280, 800, "red")
    _write(plasma / "Lake" / "contents" / "images" / "3840x2400.jpg", 3840, 2400, "blue")
    _write(plasma / "Drawing" / "contents" / "images" / "1920x1080.png", 1920, 1080, "green")
    _write(mate / "Leaf.jpg", 600, 500, "yellow")
    monkeypatch.setattr(data, "PLASMA_WALLPAPERS", plasma)
    monkeypatch.setitem(data.WALLPAPER_PHOTOGRAPHS, "plasma-workspace-wallpapers", ("plasma", ("Lake",)))
    monkeypatch.setattr(data, "MATE_NATURE", mate)
    monkeypatch.setitem(data.WALLPAPER_PHOTOGRAPHS, "mate-backgrounds", ("mate", ("Leaf",)))
    _write(tmp_path / "backgrounds" / "Kleiber_by_Lukas_Baubkus.jpg", 700, 1400, "white")  # a portrait one
    monkeypatch.setattr(data, "BACKGROUNDS", tmp_path / "backgrounds")
    with pytest.warns(UserWarning, match="lomiri-wallpapers-16.04"):  # none of its photographs is here
        images = data.package_images(wallpapers=True)
    assert images["lomiri.Kleiber_by_Lukas_Baubkus"].shape == (1400, 700, 3)
    assert images["plasma.Lake"].shape == (data.WALLPAPER_SIDE, round(data.WALLPAPER_SIDE * 1.6), 3)
    red, _, blue = images["plasma.Lake"][0, 0].astype(int)  # the blue 3840x2400 file, not the red 1280x800 one
    assert blue > 240 and red < 15
    assert images["mate.Leaf"].shape == (500, 600, 3)
    assert "plasma.Drawing" not in images and "mate.Leaf" not in data.package_images()  # only when asked for
    np.testing.assert_array_equal(data.named_image("plasma.Lake"), images["plasma.Lake"])


def test_more_photographs_are_read_as_rgb_named_by_source_and_only_when_asked_for(monkeypatch, tmp_path):
    """--more-photographs: grey files come back as three equal channels, each image under `<source>.<stem>`, and
    `named_image` finds every one; a source that is absent is warned about by its install command."""
    from PIL import Image

    from training import data

    grey = tmp_path / "opencv"
    grey.mkdir()
    for name in data.OPENCV_DOC_GREY:
        Image.fromarray(np.full((480, 640), 90, np.uint8)).save(grey / f"{name}.png")
    for name, folder in data.LABELME_PHOTOGRAPHS.items():
        _write(tmp_path / "labelme" / folder / f"{name}.jpg", 500, 375, "red")
    monkeypatch.setattr(data, "OPENCV_DOC", grey)
    monkeypatch.setattr(data, "LABELME", tmp_path / "labelme")
    monkeypatch.setattr(data, "LIBSIXEL", tmp_path / "absent")
    with pytest.warns(UserWarning, match="apt-get install libsixel-examples"):
        images = data.package_images(more=True)
    assert images["opencv-doc.basketball1"].shape == (480, 640, 3)
    assert (images["opencv-doc.basketball1"] == 90).all()
    assert images["skimage.motorcycle_left"].shape == (500, 741, 3)
    assert images["skimage.brick"].shape == (512, 512, 3) and (np.ptp(images["skimage.brick"], axis=2) == 0).all()
    assert {f"labelme.{n}" for n in data.LABELME_PHOTOGRAPHS} <= set(images)
    assert not any(k.startswith("labelme.") for k in data.package_images())  # only when asked for
    for name in ("labelme.0002", "skimage.motorcycle_right", "skimage.moon"):
        np.testing.assert_array_equal(data.named_image(name), images[name])
    with pytest.raises(InputError, match="apt-get install libsixel-examples"):
        data.package_images(complete=True, more=True)


def test_a_missing_wallpaper_package_is_refused_with_its_install_command(monkeypatch, tmp_path):
    from training import data

    for folder in ("PLASMA_WALLPAPERS", "MATE_NATURE", "BACKGROUNDS"):
        monkeypatch.setattr(data, folder, tmp_path / "absent")
    with pytest.raises(InputError, match="apt-get install plasma-workspace-wallpapers") as refused:
        data.package_images(complete=True, wallpapers=True)
    assert "apt-get install lomiri-wallpapers-20.04" in refused.value.fix
