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


# --- arguments of unusual kinds (issue 41): converted where the meaning is clear, refused where it is not ---------
@pytest.fixture(scope="module")
def tiny():
    from pid_sdk import Decoder

    return Decoder.load(preset="tiny")


def test_numpy_byte_order_and_strides_are_converted_and_decode_the_same(tiny):
    z = np.random.default_rng(0).standard_normal((1, 16, 2, 2)).astype(np.float32)
    want = tiny.decode(z, seed=0)
    for other in (z.astype(">f4"), np.ascontiguousarray(z[..., ::-1])[..., ::-1], z.astype(">f8")):
        torch.testing.assert_close(tiny.decode(other, seed=0), want, rtol=0, atol=1e-6)
    with pytest.raises(InputError, match="long double"):
        tiny.decode(z.astype(np.longdouble))
    huge = np.broadcast_to(np.zeros(1, ">f4"), (1, 16, 1 << 20, 1 << 20))  # 64 TB if copied
    with pytest.raises(InputError, match="too large to convert"):
        tiny.decode(huge)


@pytest.mark.parametrize("make,match", [
    (lambda: torch.randn(1, 16, 2, 2).to_sparse(), "sparse"),
    (lambda: torch.nested.nested_tensor([torch.randn(16, 2, 2), torch.randn(16, 2, 4)]), "nested"),
    (lambda: torch.empty(1, 16, 2, 2, device="meta"), "meta device"),
    (lambda: torch.randn(1, 16, 2, 2, dtype=torch.complex64), "complex"),
    (lambda: np.zeros((1, 16, 2, 2), dtype=np.complex64), "complex"),
    (lambda: [[[[0.0]]]], "must be a tensor"),
])
def test_tensors_of_other_kinds_are_refused(tiny, make, match):
    with pytest.raises(InputError, match=match):
        tiny.decode(make())


def test_flags_are_real_booleans_and_seeds_real_integers(tiny):
    z = torch.randn(1, 16, 2, 2)
    for flag in ("normalized",):
        with pytest.raises(InputError, match=f"{flag} must be True or False"):
            tiny.decode(z, **{flag: "no"})
    assert inputs.check_flag("x", np.bool_(True)) is True
    torch.testing.assert_close(tiny.decode(z, seed=np.int64(3)), tiny.decode(z, seed=3), rtol=0, atol=0)
    for seed in ("abc", 2**70, 1.5, -1, True):
        with pytest.raises(InputError, match="seed must be an integer"):
            tiny.decode(z, seed=seed)
    with pytest.raises(InputError, match="on_step must be a function"):
        tiny.decode(z, on_step=5)
    with pytest.raises(InputError, match="latent_sigma is out of range|latent_sigma must be a number"):
        tiny.decode(z, latent_sigma=10**400)


def test_load_arguments_are_checked_before_anything_runs(tmp_path):
    from pid_sdk import Decoder
    from pid_sdk.errors import ConfigError

    marker = tmp_path / "ran"
    torch.save({"x": Exploit(str(marker))}, tmp_path / "m.pth")
    for value in ("no", 1, None, "False"):
        with pytest.raises(InputError, match="trust_pickle must be True or False"):
            Decoder.load(tmp_path / "m.pth", trust_pickle=value)
        with pytest.raises(InputError, match="verify must be True or False"):
            Decoder.load(tmp_path / "m.pth", verify=value)
    assert not marker.exists()  # no truthy value ran the file's code
    with pytest.raises(ConfigError, match="Unknown speed setting"):
        Decoder.load(preset="tiny", speed=["fast"])
    with pytest.raises(ConfigError, match="text_encoder must be a folder or an encoder"):
        Decoder.load(preset="tiny", text_encoder=42)


class Exploit:
    """A pickle that runs code when loaded: it writes a marker file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
