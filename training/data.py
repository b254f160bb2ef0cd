"""Training pairs from real images: a high-resolution crop and the latent of its 4x smaller version.

Images come from a folder or from the ones that ship inside packages. Each batch shares one aspect bucket and takes
the images nearest its aspect ratio; crops are taken at several scales so small package images still give many
distinct views, or (`crop="centre"`) each image is resized to cover the bucket and its centre kept.
"""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from pid_sdk.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
DEMO_HELD_OUT = ("skimage.chelsea",)  # the source of the bundled sample latent: never trained on


def folder_images(folder: str | Path) -> dict[str, np.ndarray]:
    """Every image under `folder` as RGB, keyed by its path inside the folder without the suffix, in path order."""
    folder = Path(folder)
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InputError(f"No images in {folder}.", expected=", ".join(sorted(IMAGE_SUFFIXES)))
    return {str(p.relative_to(folder).with_suffix("")): np.asarray(Image.open(p).convert("RGB")) for p in paths}


def load_folder(folder: str | Path) -> list[np.ndarray]:
    return list(folder_images(folder).values())


def package_images(exclude: tuple[str, ...] = (), *, complete: bool = False, wallpapers: bool = False,
                   more: bool = False) -> dict[str, np.ndarray]:
    """Real photographs that ship inside installed packages: scikit-image's, and those of `OPTIONAL_SOURCES` (with
    `wallpapers` of `WALLPAPER_SOURCES`, with `more` of `MORE_SOURCES`) that are installed. A missing source is
    warned about, or with `complete` refused: the demo's recorded runs had all."""
    from skimage import data

    images = {f"skimage.{name}": np.asarray(getattr(data, name)())[..., :3]
              for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina",
                           "immunohistochemistry")}
    sources = OPTIONAL_SOURCES + (WALLPAPER_SOURCES if wallpapers else ()) + (MORE_SOURCES if more else ())
    found, missing = source_images(sources)
    images.update(found)
    if missing and complete:
        raise InputError("The package photographs are incomplete on this machine, so a run would train on fewer "
                         "than the demo's recorded runs.",
                         received="missing: " + "; ".join(f"{what} ({install})" for what, install in missing),
                         expected=f"{len(sources)} sources besides scikit-image",
                         fix=f"install them ({'; '.join(dict.fromkeys(i for _, i in missing))}), or pass "
                             "--partial-data to train on what is here")
    if missing:
        warnings.warn(f"package photographs missing: {'; '.join(f'{w} ({i})' for w, i in missing)}", stacklevel=2)
    return {k: v for k, v in images.items() if k not in exclude}


OPENCV_DOC = Path("/usr/share/doc/opencv-doc/examples/data")  # Debian's opencv-doc package
SYNTHETIC = ("detect_blob", "opencv-logo", "sudoku", "chessboard", "board")


def opencv_doc_images(min_side: int = 384) -> dict[str, np.ndarray]:
    """The colour photographs of Debian's opencv-doc examples, where that package is installed."""
    out = {}
    for path in sorted(OPENCV_DOC.glob("*")) if OPENCV_DOC.is_dir() else []:
        if path.suffix.lower() not in (".jpg", ".png") or path.stem.startswith(SYNTHETIC):
            continue
        img = np.asarray(Image.open(path).convert("RGB"))
        rgb = img.astype(np.float32)
        colour = np.abs(rgb[..., 0] - rgb[..., 1]).mean() + np.abs(rgb[..., 1] - rgb[..., 2]).mean()
        if min(img.shape[:2]) >= min_side and colour > 8:  # photographs, not grey calibration targets
            out[f"opencv-doc.{path.stem}"] = img
    return out


def _sklearn_images() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_sample_images

    return {f"sklearn.{i}": img for i, img in enumerate(load_sample_images().images)}


def _matplotlib_images() -> dict[str, np.ndarray]:
    import matplotlib.cbook as cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return {"matplotlib.grace_hopper": np.asarray(Image.open(f).convert("RGB"))}


def source_images(sources: tuple) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    """The images of each installed source of `sources` ((what, install command, loader) triples), and what and how
    to install for each missing one."""
    images, missing = {}, []
    for what, install, load in sources:
        found = _loaded_or_none(load)
        images.update(found)
        if not found:
            missing.append((what, install))
    return images, missing


def _loaded_or_none(load: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The images of one optional source, or none where its package is absent or installed without its data."""
    try:
        return load()
    except (ImportError, OSError):
        return {}


# Debian's desktop wallpapers: 1280-6000 px, mostly drawings. Per package: the prefix of its images' names and the
# photographs among them. plasma: /usr/share/wallpapers/<name>/contents/images/WxH.*; mate and lomiri: <name>.jpg.
WALLPAPER_PHOTOGRAPHS = {
    "plasma-workspace-wallpapers": ("plasma", (
        "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey", "Kite",
        "OneStandsOut", "Path", "summer_1am")),
    "mate-backgrounds": ("mate", (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
        "TwoWings", "Wood", "YellowFlower")),
    "lomiri-wallpapers-16.04": ("lomiri", (
        "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace", "Picture_1A_by_freespace",
        "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi", "free_by_Peter_Nerlich",
        "friends_by_Aitzol_Berasategi", "greentock_by_Peter_Nerlich", "life_by_Aitzol_Berasategi",
        "picosdeeuropa_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi")),
    "lomiri-wallpapers-20.04": ("lomiri", ("Kleiber_by_Lukas_Baubkus",)),
}
PLASMA_WALLPAPERS = Path("/usr/share/wallpapers")
MATE_NATURE = Path("/usr/share/backgrounds/mate/nature")
BACKGROUNDS = Path("/usr/share/backgrounds")  # lomiri's
WALLPAPER_SIDE = 768  # their shorter side is brought down to about the other photographs' scale


def wallpaper_path(name: str) -> Path:
    """Where `plasma.<name>` (its largest size), `mate.<name>` or `lomiri.<name>` lies; FileNotFoundError if absent."""
    source, _, stem = name.partition(".")
    if source == "plasma":  # <name>/contents/images/WxH.jpg or .png
        sizes = (PLASMA_WALLPAPERS / stem / "contents" / "images").iterdir()
        return max(sizes, key=lambda f: np.prod([int(v) for v in f.stem.split("x")]))
    path = (MATE_NATURE if source == "mate" else BACKGROUNDS) / f"{stem}.jpg"
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def shrunk_wallpaper(name: str, side: int = WALLPAPER_SIDE) -> np.ndarray:
    img = Image.open(wallpaper_path(name)).convert("RGB")
    s = side / min(img.size)
    if s < 1:
        img = img.resize((round(img.width * s), round(img.height * s)), Image.LANCZOS)
    return np.asarray(img)


def _package_wallpapers(package: str) -> dict[str, np.ndarray]:
    source, names = WALLPAPER_PHOTOGRAPHS[package]
    return {f"{source}.{n}": shrunk_wallpaper(f"{source}.{n}") for n in names}


OPTIONAL_SOURCES = (  # (what, how to install it, loader)
    ("scikit-learn's sample images", "pip install 'pid-sdk[train]'", _sklearn_images),
    ("matplotlib's grace_hopper", "pip install 'pid-sdk[train]'", _matplotlib_images),
    ("Debian's opencv-doc photographs", "apt-get install opencv-doc", opencv_doc_images),
)
WALLPAPER_SOURCES = tuple(  # the demo's pool from the thirteenth stop on (training/demo/train_demo.py --wallpapers)
    (f"Debian's {package} photographs", f"apt-get install {package}", partial(_package_wallpapers, package))
    for package in WALLPAPER_PHOTOGRAPHS)


# The pool's third part (`training/demo/train_demo.py --more-photographs`, eighteenth stop): photographs the first
# two leave out, grey ones among them, read as RGB with three equal channels (the held-out skimage.camera is grey too).
SKIMAGE_GREY = ("brick", "coins", "grass", "gravel", "moon")
OPENCV_DOC_GREY = ("basketball1", "basketball2", "box_in_scene")
LABELME = Path("/usr/share/doc/labelme-examples/examples")  # Debian's labelme-examples: PASCAL VOC and other photos
LABELME_PHOTOGRAPHS = {  # one copy of each (the examples repeat them), one frame of the video
    "2011_000003": "bbox_detection/data_annotated", "2011_000006": "bbox_detection/data_annotated",
    "2011_000025": "bbox_detection/data_annotated", "0001": "classification/data_annotated",
    "0002": "classification/data_annotated", "apc2016_obj3": "tutorial", "00000100": "video_annotation/data_annotated"}
LIBSIXEL = Path("/usr/share/doc/libsixel-examples/examples/images")  # Debian's libsixel-examples
LIBSIXEL_PHOTOGRAPHS = ("egret", "snake")


def _rgb(img) -> np.ndarray:
    return np.asarray((img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))).convert("RGB"))


def _skimage_more() -> dict[str, np.ndarray]:
    from skimage import data

    left, right, _ = data.stereo_motorcycle()
    grey = {f"skimage.{name}": _rgb(getattr(data, name)()) for name in SKIMAGE_GREY}
    return {"skimage.motorcycle_left": _rgb(left), "skimage.motorcycle_right": _rgb(right), **grey}


def _opencv_doc_grey() -> dict[str, np.ndarray]:
    return {f"opencv-doc.{name}": _rgb(Image.open(OPENCV_DOC / f"{name}.png")) for name in OPENCV_DOC_GREY}


def _labelme_photographs() -> dict[str, np.ndarray]:
    return {f"labelme.{name}": _rgb(Image.open(LABELME / folder / f"{name}.jpg"))
            for name, folder in LABELME_PHOTOGRAPHS.items()}


def _libsixel_photographs() -> dict[str, np.ndarray]:
    return {f"libsixel.{name}": _rgb(Image.open(LIBSIXEL / f"{name}.jpg")) for name in LIBSIXEL_PHOTOGRAPHS}


MORE_SOURCES = (
    ("scikit-image's motorcycle pair and grey photographs", "pip install 'pid-sdk[train]'", _skimage_more),
    ("Debian's opencv-doc grey photographs", "apt-get install opencv-doc", _opencv_doc_grey),
    ("Debian's labelme-examples photographs", "apt-get install labelme-examples", _labelme_photographs),
    ("Debian's libsixel-examples photographs", "apt-get install libsixel-examples", _libsixel_photographs),
)


def named_image(name: str) -> np.ndarray:
    """Any package image by name as RGB: any `skimage.<name>` of skimage.data (grey ones made RGB), any
    `opencv-doc.<stem>` file, including those the training pool leaves out (small or grey), or the pool's others."""
    source, _, stem = name.partition(".")
    if source == "skimage":
        from skimage import data

        if hasattr(data, stem):
            return _rgb(getattr(data, stem)())
    if source == "opencv-doc":
        for path in sorted(OPENCV_DOC.glob(f"{stem}.*")):
            return np.asarray(Image.open(path).convert("RGB"))
    if source in ("plasma", "mate", "lomiri"):
        found = _loaded_or_none(lambda: {name: shrunk_wallpaper(name)})
    else:
        loader = {"sklearn": _sklearn_images, "matplotlib": _matplotlib_images, "skimage": _skimage_more,
                  "labelme": _labelme_photographs, "libsixel": _libsixel_photographs}.get(source)
        found = _loaded_or_none(loader) if loader else {}
    if name in found:
        return found[name]
    raise InputError(f"No package image named {name}.", received=name,
                     expected="skimage.<name>, sklearn.<i>, matplotlib.grace_hopper, opencv-doc.<stem>, "
                              "plasma.<name>, mate.<name>, lomiri.<name>, labelme.<name> or libsixel.<name>",
                     fix="see training/data.py for where each source comes from")


def to_tensor(img: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255  # [3, H, W] in [0, 1]


def centre_crop(x: Tensor, height: int, width: int) -> Tensor:
    """Resize to cover (height, width), then cut the centre: the evaluation view of an image."""
    _, h, w = x.shape
    s = max(height / h, width / w)
    x = F.interpolate(x[None], size=(max(height, round(h * s)), max(width, round(w * s))), mode="bicubic",
                      antialias=True, align_corners=False)[0].clamp(0, 1)
    top, left = (x.shape[1] - height) // 2, (x.shape[2] - width) // 2
    return x[:, top:top + height, left:left + width]


def random_crop(x: Tensor, height: int, width: int, scale: float, gen: torch.Generator) -> Tensor:
    """A crop covering `scale` of the image's shorter side, resized to (height, width)."""
    _, h, w = x.shape
    ch = max(height // 4, min(h, round(min(h, w) * scale * height / max(height, width))))
    cw = max(width // 4, min(w, round(ch * width / height)))
    ch, cw = min(ch, h), min(cw, w)
    top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
    left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
    crop = x[:, top:top + ch, left:left + cw]
    if torch.rand(1, generator=gen) < 0.5:
        crop = crop.flip(-1)
    return F.interpolate(crop[None], size=(height, width), mode="bicubic", antialias=True,
                         align_corners=False)[0].clamp(0, 1)


def augmented(crop: Tensor, gen: torch.Generator) -> Tensor:
    """The crop turned a quarter or not (square crops only) and upside down or not, which with `random_crop`'s mirror
    gives any of its eight rotations and mirror images, and half the time its colour channels in another order: views
    of the same photograph the network has not seen, for a pool too small to stop it from learning its pictures
    (docs/quality.md, eighteenth stop)."""
    if crop.shape[-1] == crop.shape[-2] and torch.rand(1, generator=gen) < 0.5:
        crop = crop.transpose(-1, -2)
    if torch.rand(1, generator=gen) < 0.5:
        crop = crop.flip(-2)
    if torch.rand(1, generator=gen) < 0.5:
        crop = crop[torch.randperm(3, generator=gen).tolist()]  # a list indexes a crop on any device
    return crop


def downsample(x: Tensor, factor: int) -> Tensor:
    """[B, 3, H, W] in [0, 1] -> [B, 3, H/f, W/f], antialiased bicubic."""
    return F.interpolate(x, scale_factor=1 / factor, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


class PairSampler:
    """Batches of {"image": [B, 3, H, W] in [-1, 1], "latent": [B, C, H/(4f), W/(4f)]} from a list of images.

    Each batch is one bucket (height, width), drawn uniformly among the buckets; its images are drawn among those
    whose aspect ratio is nearest the bucket's, so a portrait photograph never gives a panorama's sliver. Buckets of
    one aspect ratio (sizes of a square, say) share all images. `crop="random"` cuts a crop covering one of
    `scales` of the image's shorter side at a random place, flipped half the time; `crop="centre"` takes the whole
    image, resized to cover the bucket, and its centre. `augment` (random crops only) turns, mirrors and recolours
    each crop (`augmented`); off, the crops are those of the recorded runs.
    """

    CROPS = ("random", "centre")

    def __init__(self, images: list[np.ndarray], encode: Callable[[Tensor], Tensor], *, buckets: list[tuple[int, int]],
                 sr_scale: int = 4, scales: tuple[float, ...] = (1.0, 0.7, 0.5), seed: int = 0,
                 device: str | torch.device = "cpu", crop: str = "random", augment: bool = False):
        if not images:
            raise InputError("No training images.", fix="pass a folder of images or use the package images")
        if crop not in self.CROPS:
            raise InputError("Unknown crop.", received=crop, expected=" or ".join(self.CROPS))
        # Crops are cut and resized where the images are: on the training device, so a GPU run does no per-crop
        # work on the host.
        self.images = [to_tensor(i).to(device) for i in images]
        self.encode, self.sr, self.scales, self.crop, self.augment = encode, sr_scale, scales, crop, augment
        self.members = bucket_members([i.shape[:2] for i in images], buckets)
        self.buckets = [b for b in buckets if self.members[b]]
        if len(self.buckets) < len(buckets):
            idle = ", ".join(f"{h}x{w}" for h, w in buckets if not self.members[(h, w)])
            warnings.warn(f"No training image has the aspect ratio of bucket {idle}; it is not trained.", stacklevel=2)
        self.gen = torch.Generator().manual_seed(seed)

    def batch(self, size: int) -> dict[str, Tensor]:
        return self._batch(size, self._bucket())

    def batch_of_pixels(self, pixels: int) -> dict[str, Tensor]:
        """A batch of one random bucket with about `pixels` pixels in all (at least one crop)."""
        height, width = self._bucket()
        return self._batch(max(1, round(pixels / (height * width))), (height, width))

    def _bucket(self) -> tuple[int, int]:
        return self.buckets[int(torch.randint(len(self.buckets), (1,), generator=self.gen))]

    def _batch(self, size: int, bucket: tuple[int, int]) -> dict[str, Tensor]:
        height, width = bucket
        members, crops = self.members[bucket], []
        for _ in range(size):
            img = self.images[members[int(torch.randint(len(members), (1,), generator=self.gen))]]
            if self.crop == "centre":
                crops.append(centre_crop(img, height, width))
                continue
            scale = self.scales[int(torch.randint(len(self.scales), (1,), generator=self.gen))]
            crop = random_crop(img, height, width, scale, self.gen)
            crops.append(augmented(crop, self.gen) if self.augment else crop)
        hr = torch.stack(crops)
        with torch.no_grad():
            latent = self.encode(downsample(hr, self.sr))
        return {"image": hr * 2 - 1, "latent": latent}


def bucket_members(sizes: list[tuple[int, int]], buckets: list[tuple[int, int]]) -> dict[tuple[int, int], list[int]]:
    """For each bucket, the indices of the images (height, width) whose aspect ratio is nearest its own."""
    if not buckets:
        raise InputError("No buckets to train on.", expected="one or more (height, width)", fix="e.g. --size 512")
    ratios = sorted({h / w for h, w in buckets})
    nearest = [min(ratios, key=lambda r: abs(np.log(h / w / r))) for h, w in sizes]
    return {(h, w): [i for i, r in enumerate(nearest) if r == h / w] for h, w in buckets}
