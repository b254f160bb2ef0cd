"""Text conditioning: Gemma-2-2B-it hidden states with the instruction prefix (spec section 2.4).

Only local paths are read (`local_files_only=True`): a deployed decoder never downloads at run time.
"""

from __future__ import annotations

from collections import OrderedDict
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from pid_sdk.errors import ConfigError

GEMMA_ID = "Efficient-Large-Model/gemma-2-2b-it"
DEFAULT_NEGATIVE = (
    "low quality, worst quality, over-saturated, three legs, six fingers, cartoon, anime, cgi, low res, blurry, "
    "deformed, distortion, duplicated limbs, plastic skin, jpeg artifacts, watermark"
)


def instruction_prefix() -> str:
    """The exact prefix the text conditioning was trained with; the user prompt follows it directly."""
    return resources.files("pid_sdk").joinpath("data", "chi_prompt.txt").read_text(encoding="utf-8")


class TextEncoder:
    """Prompt -> [B, max_length, hidden] embeddings, cached per (prompt, prefix) pair."""

    def __init__(self, path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                 max_length: int = 300, cache_size: int = 128):
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise ConfigError("Encoding prompts needs the `transformers` package.",
                              fix="pip install 'pid-sdk[text]', or pass text_embeddings= instead of prompt=") from None
        path = Path(path)
        if not path.is_dir():
            raise ConfigError(f"No text encoder folder at {path}.", expected=f"a local copy of {GEMMA_ID}",
                              fix="download it once and pass its folder (text_encoder=...); "
                                  "nothing is fetched at run time")
        self.device = torch.device(device)
        dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.tokenizer.padding_side = "right"
        lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        self.model = lm.get_decoder().to(self.device).eval()
        self.max_length = max_length
        self.prefix = instruction_prefix()
        self._cache: OrderedDict[tuple[str, bool], Tensor] = OrderedDict()
        self._cache_size = cache_size

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def encode(self, prompts: list[str], *, with_prefix: bool = True) -> Tensor:
        return torch.cat([self._cached(p, with_prefix) for p in prompts]).to(self.device)

    def _cached(self, prompt: str, with_prefix: bool) -> Tensor:
        key = (prompt, with_prefix)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        emb = self._encode_one(prompt, with_prefix)
        self._cache[key] = emb
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return emb

    @torch.no_grad()
    def _encode_one(self, prompt: str, with_prefix: bool) -> Tensor:
        text, length = prompt, self.max_length
        if with_prefix:
            n_prefix = len(self.tokenizer.encode(self.prefix))
            text, length = self.prefix + prompt, n_prefix + self.max_length - 2
        tokens = self.tokenizer([text], max_length=length, padding="max_length", truncation=True,
                                return_tensors="pt").to(self.device)
        hidden = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)[0]  # [1, length, C]
        if with_prefix:  # BOS + the last max_length-1 positions (the prompt, and padding after it)
            index = torch.tensor([0, *range(length - self.max_length + 1, length)], device=hidden.device)
            hidden = hidden[:, index]
        return hidden.float().cpu()
