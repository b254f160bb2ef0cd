"""Prompt encoding with a tiny, randomly initialised Gemma-2 built offline (no download)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from pid_sdk import Decoder  # noqa: E402
from pid_sdk.text import DEFAULT_NEGATIVE, TextEncoder, instruction_prefix  # noqa: E402

HIDDEN = 32


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("gemma")
    words = sorted(set((instruction_prefix() + " a cat on a red sofa " + DEFAULT_NEGATIVE).replace(",", " , ").split()))
    vocab = {"<pad>": 0, "<bos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(path)
    cfg = Gemma2Config(vocab_size=len(vocab), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024,
                       pad_token_id=0, bos_token_id=1)
    torch.manual_seed(0)
    Gemma2ForCausalLM(cfg).save_pretrained(path)
    return path


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


def test_cache_returns_the_same_tensor(encoder):
    encoder.encode(["a cat"])
    cached = encoder._cache[("a cat", True)]
    assert encoder._cached("a cat", True) is cached


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
