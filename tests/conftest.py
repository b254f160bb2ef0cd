from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TAE_DIR = ROOT.parent / "shared" / "data" / "tae"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; run scripts/gpu_check.sh on a GPU host")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tae_dir() -> Path:
    if not TAE_DIR.exists():
        pytest.skip(f"tiny autoencoders not found at {TAE_DIR} (shared/ must sit beside the repository)")
    return TAE_DIR


def real_image(name: str = "astronaut", size: int = 64) -> torch.Tensor:
    """A real photograph from scikit-image, centre-cropped and resized: [1, 3, size, size] in [0, 1]."""
    from PIL import Image
    from skimage import data

    img = Image.fromarray(getattr(data, name)())
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.convert("RGB").crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="session")
def tiny_engine_folder(tmp_path_factory) -> Path:
    """The tiny preset exported at 64x64 in fp32 (tests that change it work on `copy_folder` of it)."""
    pytest.importorskip("onnxscript")
    from export.engine_set import export_engine_set
    from pid_sdk.buckets import Bucket

    folder = tmp_path_factory.mktemp("tiny-engines")
    export_engine_set(folder, preset="tiny", sizes=[Bucket(64, 64)], log=lambda *_: None)
    return folder


def copy_folder(folder: Path, tmp_path: Path) -> Path:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(folder, out)
    return out
