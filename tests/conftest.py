import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pid_sdk.tae import SHARED_TAE_DIR

ROOT = Path(__file__).resolve().parents[1]
TAE_DIR = SHARED_TAE_DIR


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
    """The tiny preset exported at 64x64 in fp32 (tests that change it work on `copy_folder` of it). Where
    PID_SDK_TINY_ENGINES names such a folder, a copy of it (scripts/mutation.py exports it once for the modules
    whose mutants cannot change an export, instead of once per mutant)."""
    return _tiny_export(tmp_path_factory, "PID_SDK_TINY_ENGINES", (64, 64), ("fp32",))


@pytest.fixture(scope="session")
def tiny_bf16_engine_folder(tmp_path_factory) -> Path:
    """The tiny preset at 64x96 (not square) in fp32 and bf16: two entries of one size, one of them a precision
    ONNX Runtime's CPU provider has no kernels for. PID_SDK_TINY_BF16_ENGINES: as PID_SDK_TINY_ENGINES."""
    return _tiny_export(tmp_path_factory, "PID_SDK_TINY_BF16_ENGINES", (64, 96), ("fp32", "bf16"))


def _tiny_export(tmp_path_factory, variable: str, size: tuple[int, int], precisions: tuple[str, ...]) -> Path:
    pytest.importorskip("onnxscript")
    from export.export_folder import export_engine_set
    from pid_sdk.buckets import Bucket

    folder = tmp_path_factory.mktemp("tiny-engines")
    if os.environ.get(variable):
        shutil.copytree(os.environ[variable], folder, dirs_exist_ok=True)
        return folder
    export_engine_set(folder, preset="tiny", sizes=[Bucket(*size)], precisions=list(precisions), log=lambda *_: None)
    return folder


@pytest.fixture
def ctrl_c():
    """Ctrl-C raising KeyboardInterrupt in this process, as in a terminal: a suite started in the background of a
    non-interactive shell inherits SIGINT ignored, and then `_thread.interrupt_main()` does nothing."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def default_sigint() -> None:
    """preexec_fn for a child that must see Ctrl-C whatever this process inherited (see `ctrl_c`)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def sealed(manifest: dict) -> dict:
    """A manifest edited by a test, given the right digest again: what an attacker who edits one can also do, so
    the checks behind the digest are reached."""
    from pid_sdk.files import digest

    return {**manifest, "manifest_sha256": digest(manifest)} if isinstance(manifest, dict) else manifest


def copy_folder(folder: Path, tmp_path: Path) -> Path:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(folder, out)
    return out


GEMMA_HIDDEN = 32  # the tiny presets' txt_embed_dim


@pytest.fixture(scope="session")
def gemma_dir(tmp_path_factory):
    """A tiny, randomly initialised Gemma-2 and its tokenizer, built offline (no download): a local text encoder."""
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerFast

    from pid_sdk.text import DEFAULT_NEGATIVE, instruction_prefix

    path = tmp_path_factory.mktemp("gemma")
    words = sorted(set((instruction_prefix() + " a cat on a red sofa " + DEFAULT_NEGATIVE).replace(",", " , ").split()))
    vocab = {"<pad>": 0, "<bos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(path)
    cfg = Gemma2Config(vocab_size=len(vocab), hidden_size=GEMMA_HIDDEN, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024,
                       pad_token_id=0, bos_token_id=1)
    torch.manual_seed(0)
    Gemma2ForCausalLM(cfg).save_pretrained(path)
    return path
