"""The ComfyUI node pack (samples/comfyui/pid_sdk_nodes) against ComfyUI's node contract. ComfyUI itself cannot be
installed here (it is installed from GitHub, not a package registry), so the nodes are imported as ComfyUI imports a
custom node folder and called as its executor calls them: INPUT_TYPES' names as keyword arguments, a tuple back."""

import importlib.util
from pathlib import Path

import pytest
import torch

import pid_sdk
from pid_sdk.latents import get_latent_space

PACK = Path(__file__).resolve().parents[1] / "samples" / "comfyui" / "pid_sdk_nodes"
COMFY_TYPES = {"STRING", "INT", "BOOLEAN", "LATENT", "IMAGE", "PID_DECODER"}


@pytest.fixture(scope="module")
def nodes():
    spec = importlib.util.spec_from_file_location("pid_sdk_nodes", PACK / "__init__.py",
                                                  submodule_search_locations=[str(PACK)])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_node_keeps_comfyuis_node_contract(nodes):
    assert set(nodes.NODE_CLASS_MAPPINGS) == set(nodes.NODE_DISPLAY_NAME_MAPPINGS) == {"PiDLoader", "PiDDecode"}
    for cls in nodes.NODE_CLASS_MAPPINGS.values():
        inputs = cls.INPUT_TYPES()
        assert set(inputs) <= {"required", "optional"} and callable(getattr(cls(), cls.FUNCTION))
        for spec in [*inputs["required"].values(), *inputs.get("optional", {}).values()]:
            kind = spec[0]
            assert kind in COMFY_TYPES or (isinstance(kind, tuple) and all(isinstance(c, str) for c in kind)), spec
        assert isinstance(cls.RETURN_TYPES, tuple) and set(cls.RETURN_TYPES) <= COMFY_TYPES and cls.CATEGORY


def node(nodes, name: str):
    return nodes.NODE_CLASS_MAPPINGS[name]()


def test_a_comfyui_latent_decodes_as_the_api_decodes_its_raw_form(nodes):
    """ComfyUI's LATENT holds the VAE's raw latent: the node decodes it with normalized=False."""
    (decoder,) = node(nodes, "PiDLoader").load(model=str(pid_sdk.DEMO_MODEL), device="cpu")
    space = get_latent_space("flux1")
    normalised = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(4))
    raw = normalised / space.scale + space.shift  # what ComfyUI's VAE encoder hands on
    decode = node(nodes, "PiDDecode").decode
    (image,) = decode(decoder=decoder, samples={"samples": raw}, seed=5, latent_space="flux1",
                      windows="auto when larger than trained")
    expected = decoder.decode(raw, seed=5, normalized=False)
    assert image.shape == (1, 256, 256, 3) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert torch.equal(image, ((expected + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1))
    (as_if_normalised,) = decode(decoder=decoder, samples={"samples": raw}, seed=5, latent_space="flux1",
                                 windows="whole image", latent_is_normalized=True)
    assert (as_if_normalised - image).abs().max() > 0.05  # the raw form is heard
    (other,) = decode(decoder=decoder, samples={"samples": raw}, seed=6, latent_space="flux1", windows="whole image")
    assert (other - image).abs().max() > 0.01  # the seed is heard


def test_an_image_past_the_trained_sizes_decodes_through_windows(nodes):
    (decoder,) = node(nodes, "PiDLoader").load(model=str(pid_sdk.DEMO_MODEL), device="cpu")
    z = torch.randn(1, 16, 24, 16, generator=torch.Generator().manual_seed(1))  # 768x512: past 512x512
    (image,) = node(nodes, "PiDDecode").decode(decoder=decoder, samples={"samples": z}, seed=0,
                                               latent_space="model's own", windows="auto when larger than trained",
                                               latent_is_normalized=True)
    windowed = decoder.decode(z, seed=0, window="auto")
    assert torch.equal(image, ((windowed + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1))
    whole = decoder.decode(z, seed=0)
    assert not torch.equal(windowed, whole)  # the windows are heard
