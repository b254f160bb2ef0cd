"""Prompt encoding with a tiny, randomly initialised Gemma-2 built offline (no download)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from pid_sdk import Decoder  # noqa: E402
from pid_sdk.text import TextEncoder, instruction_prefix  # noqa: E402

HIDDEN = 32


@pytest.fixture(scope="module")
def encoder(gemma_dir):
    return TextEncoder(gemma_dir, max_length=16)


def test_prefix_is_the_spec_text():
    prefix = instruction_prefix()
    assert prefix.startswith('Given a user prompt, generate an "Enhanced prompt"')
    assert prefix.endswith("User Prompt: ") and prefix.count("\n") == 7


def test_shapes_with_and_without_prefix(encoder):
    a = encoder.encode(["a cat", "a red sofa"])
    assert a.shape == (2, 16, HIDDEN)
    assert encoder.encode(["a cat"], with_prefix=False).shape == (1, 16, HIDDEN)


def test_selection_is_bos_plus_last_positions(encoder):
    tok, model = encoder.tokenizer, encoder.model
    prefix = encoder.prefix
    n = len(tok.encode(prefix)) + 16 - 2
    ids = tok([prefix + "a cat"], max_length=n, padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        full = model(input_ids=ids.input_ids, attention_mask=ids.attention_mask)[0]
    want = torch.cat([full[:, :1], full[:, -15:]], dim=1)
    torch.testing.assert_close(encoder.encode(["a cat"]), want.float())


def test_a_cached_prompt_does_not_run_the_model_again(encoder, monkeypatch):
    first = encoder.encode(["a cat"])
    monkeypatch.setattr(encoder, "_encode_one", lambda *a: pytest.fail("the model ran for a cached prompt"))
    torch.testing.assert_close(encoder.encode(["a cat"]), first, rtol=0, atol=0)
    with pytest.raises(pytest.fail.Exception, match="ran for a cached prompt"):
        encoder.encode(["a dog"])  # the negative control: a new prompt does run it


def test_missing_folder_is_a_config_error(tmp_path):
    from pid_sdk.errors import ConfigError

    with pytest.raises(ConfigError, match="No text encoder folder"):
        TextEncoder(tmp_path / "nope")


def test_decode_with_a_prompt(gemma_dir):
    from dataclasses import replace

    from pid_sdk.checkpoints import LoadedModel
    from pid_sdk.config import PRESETS
    from pid_sdk.model import build_model, randomize

    cfg = PRESETS["tiny"]
    enc = TextEncoder(gemma_dir, max_length=cfg.backbone.txt_max_length)
    cfg = replace(cfg, backbone=replace(cfg.backbone, txt_embed_dim=HIDDEN))
    dec = Decoder.from_model(LoadedModel(randomize(build_model(cfg), 0), cfg, "random", "test", []), text_encoder=enc)
    z = torch.randn(1, 16, 4, 4)
    a = dec.decode(z, prompt="a cat", seed=0)
    b = dec.decode(z, prompt="a red sofa", seed=0)
    torch.testing.assert_close(dec.decode(z, text_embeddings=enc.encode(["a cat"]), seed=0), a)
    assert (a - b).abs().max() > 1e-5
    t = dec.decode(z, prompt="a cat", seed=0, sampler="teacher", steps=2)  # negative prompt encoded by Gemma too
    assert t.shape == a.shape
