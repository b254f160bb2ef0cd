"""pid_sdk/inputs.py on its own: each check refuses from metadata first, names what it got, and passes good input
through unchanged (the decoder's and the CLI's own tests cover the same refusals end to end)."""

import numpy as np
import pytest
import torch

from pid_sdk import inputs
from pid_sdk.errors import InputError
from pid_sdk.latents import get_latent_space


def test_latent_shape_gives_the_output_size_and_refuses_by_shape_alone():
    flux1 = get_latent_space("flux1")
    assert inputs.check_latent_shape((1, 16, 16, 16), flux1, 4, 8192, inputs.MAX_PIXELS) == (512, 512)
    assert inputs.check_latent_shape((16, 16, 8), flux1, 4, 8192, inputs.MAX_PIXELS) == (512, 256)
    for shape, match in (((16, 4), "wrong rank"), ((1, 16, 0, 4), "empty"), ((1, 4, 8, 8), "number of channels"),
                         ((1, 16, 100_000, 100_000), "too large")):
        with pytest.raises(InputError, match=match):
            inputs.check_latent_shape(shape, flux1, 4, 8192, inputs.MAX_PIXELS)


def test_latent_values_must_be_finite_and_plausible():
    inputs.check_latent_values(torch.randn(1, 16, 4, 4))
    with pytest.raises(InputError, match="The latent contains NaN"):
        inputs.check_latent_values(torch.tensor([0.0, float("inf")]))
    with pytest.raises(InputError, match="values no LDM produces"):
        inputs.check_latent_values(torch.tensor([1e5]))


def test_text_embeddings_are_shaped_checked_and_broadcast_to_the_batch():
    e = inputs.check_text_embeddings(np.ones((5, 32), np.float32), batch=3, max_length=8, width=32)
    assert e.shape == (3, 5, 32) and e.dtype == torch.float32
    for bad, match in ((torch.ones(1, 9, 32), "wrong shape"), (torch.ones(2, 5, 32), "wrong shape"),
                       (torch.ones(1, 5, 31), "wrong shape"), (torch.full((1, 5, 32), float("nan")), "contain NaN"),
                       (torch.full((1, 5, 32), 1e6), "no text encoder produces"),
                       (torch.ones(1, 5, 32, dtype=torch.int64), "integer")):
        with pytest.raises(InputError, match=match):
            inputs.check_text_embeddings(bad, batch=3, max_length=8, width=32)


def test_integer_options_name_the_flag_or_argument_in_their_fix():
    assert inputs.check_int("steps", 4, 1, 10, "4 (default)") == 4
    with pytest.raises(InputError) as api:
        inputs.check_int("steps", 0, 1, 10, "4 (default), or 1, 2, 3")
    with pytest.raises(InputError) as cli:
        inputs.check_int("--batch-size", True, 1, 10, "1 (default)")
    assert api.value.fix == "pass steps=4" and cli.value.fix == "pass --batch-size 1"


def test_seeds_and_sigmas():
    assert inputs.check_seed(None) is None and inputs.check_seed([1, 2], batch=2) == [1, 2]
    with pytest.raises(InputError, match="one seed per latent"):
        inputs.check_seed([1], batch=2)
    flux1, sdxl = get_latent_space("flux1"), get_latent_space("sdxl")
    assert inputs.check_sigma(0.5, 2, flux1).tolist() == [0.5, 0.5]
    assert inputs.check_sigma(3.0, 1, sdxl).tolist() == [3.0]  # the Euler frame has no upper bound
    for sigma in (1.5, -0.1, float("nan"), "0.5", [0.1, 0.2, 0.3]):
        with pytest.raises(InputError, match="latent_sigma"):
            inputs.check_sigma(sigma, 2, flux1)
