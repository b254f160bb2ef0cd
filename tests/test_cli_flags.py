"""Every flag of `pid-sdk decode` does what it says: each decode equals the API call the flag stands for (and
differs from the decode without it), every refusal names the flag; `export` with its default sizes, the API's
`on_step` and `providers=`."""

import datetime
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from pid_sdk import Decoder
from pid_sdk.cli import main


def decode_cli(capsys, tmp_path, latent_path, *flags, name="out.png") -> tuple[int, str, np.ndarray | None]:
    out = tmp_path / name
    code = main(["decode", str(latent_path), "-o", str(out), "--quiet", "--steps", "2", *map(str, flags)])
    err = capsys.readouterr().err
    return code, err, np.asarray(Image.open(out)).astype(int) if code == 0 else None


@pytest.fixture()
def latent(tmp_path):
    z = torch.randn(1, 16, 2, 2, generator=torch.Generator().manual_seed(4))
    save_file({"latent": z}, str(tmp_path / "z.safetensors"))
    return tmp_path / "z.safetensors", z


def api(z, **kwargs) -> np.ndarray:
    return Decoder.load(preset="tiny").decode(z, seed=[0], steps=2, output="numpy", **kwargs)[0].astype(int)


@pytest.mark.parametrize("flags,kwargs", [
    (["--sampler", "ode"], {"sampler": "ode"}),
    (["--sampler", "teacher", "--guidance", "1"], {"sampler": "teacher", "guidance": 1.0}),
    (["--raw"], {"normalized": False}),
    (["--latent-sigma", "0.3"], {"latent_sigma": 0.3}),
    (["--latent-space", "sd3", "--raw"], {"latent_space": "sd3", "normalized": False}),
    (["--device", "cpu"], {}),
])
def test_each_decode_flag_is_its_api_argument(tmp_path, capsys, latent, flags, kwargs):
    path, z = latent
    code, err, image = decode_cli(capsys, tmp_path, path, "--preset", "tiny", *flags)
    assert code == 0, err
    assert np.abs(image - api(z, **kwargs)).max() <= 1
    if kwargs:  # the flag changes the image
        assert np.abs(image - api(z)).mean() > 1


def test_text_embeddings_and_a_prompt_through_a_local_encoder(tmp_path, capsys, latent, gemma_dir):
    from pid_sdk.text import TextEncoder

    path, z = latent
    text = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(2))
    save_file({"latent": text}, str(tmp_path / "text.safetensors"))
    code, err, image = decode_cli(capsys, tmp_path, path, "--preset", "tiny", "--text-embeddings",
                                  tmp_path / "text.safetensors")
    assert code == 0 and np.abs(image - api(z, text_embeddings=text)).max() <= 1, err
    code, err, image = decode_cli(capsys, tmp_path, path, "--preset", "tiny", "--prompt", "a cat on a red sofa",
                                  "--text-encoder", gemma_dir, name="prompt.png")
    embeddings = TextEncoder(gemma_dir, max_length=16).encode(["a cat on a red sofa"])
    assert code == 0 and np.abs(image - api(z, text_embeddings=embeddings)).max() <= 1, err
    assert np.abs(image - api(z)).mean() > 1
    code, err, _ = decode_cli(capsys, tmp_path, path, "--preset", "tiny", "--prompt", "a cat", name="x.png")
    assert code == 2 and "--prompt needs a text encoder" in err


def test_the_teacher_with_guidance_needs_a_negative_prompt(tmp_path, capsys, latent, gemma_dir):
    path, _ = latent
    code, err, _ = decode_cli(capsys, tmp_path, path, "--preset", "tiny", "--sampler", "teacher")
    assert code == 2 and "guidance needs a negative embedding" in err
    code, err, _ = decode_cli(capsys, tmp_path, path, "--preset", "tiny", "--sampler", "teacher", "--text-encoder",
                              gemma_dir, "--prompt", "a cat", name="guided.png")
    assert code == 0, err
    code, err, _ = decode_cli(capsys, tmp_path, path, "--preset", "tiny", "--guidance", "nan", name="x.png")
    assert code == 2 and "guidance must be a finite number" in err


def test_a_gpu_device_without_one_is_refused(tmp_path, capsys, latent):
    if torch.cuda.is_available():
        pytest.skip("checks the refusal on a machine without a GPU")
    code, err, _ = decode_cli(capsys, tmp_path, latent[0], "--preset", "tiny", "--device", "cuda")
    assert code == 2 and "sees no CUDA GPU" in err


def test_no_verify_opens_a_folder_whose_manifest_lost_its_hashes(tmp_path, capsys, latent, tiny_engine_folder):
    import json

    from conftest import copy_folder

    folder = copy_folder(tiny_engine_folder, tmp_path)
    data = json.loads((folder / "manifest.json").read_text())
    data["model_sha256"], data["entries"][0]["sha256"] = None, {}
    from conftest import sealed

    (folder / "manifest.json").write_text(json.dumps(sealed(data)))
    code, err, _ = decode_cli(capsys, tmp_path, latent[0], "--model", folder, name="a.png")
    assert code == 2 and "without a sha256" in err and "--no-verify" in err
    code, err, image = decode_cli(capsys, tmp_path, latent[0], "--model", folder, "--no-verify", name="b.png")
    assert code == 0 and image.shape == (64, 64, 3), err


def test_trust_pickle_is_what_loads_a_latent_file_that_needs_code(tmp_path, capsys, latent):
    _, z = latent
    torch.save({"latent": z, "made": datetime.date(2026, 12, 6)}, tmp_path / "z.pt")  # a date needs its class
    code, err, _ = decode_cli(capsys, tmp_path, tmp_path / "z.pt", "--preset", "tiny")
    assert code == 2 and "can only be loaded by running code" in err and "--trust-pickle" in err
    code, err, image = decode_cli(capsys, tmp_path, tmp_path / "z.pt", "--preset", "tiny", "--trust-pickle")
    assert code == 0 and np.abs(image - api(z)).max() <= 1, err


def test_export_without_sizes_exports_the_models_trained_sizes(tmp_path, capsys):
    from pid_sdk.runtime.manifest import read_engine_manifest

    assert main(["export", str(tmp_path / "e"), "--preset", "tiny"]) == 0, capsys.readouterr().err
    assert [e.bucket for e in read_engine_manifest(tmp_path / "e").entries] == [(64, 64)]  # tiny's trained size
    assert capsys.readouterr().out.splitlines()[0] == (
        "exporting 1 graph set (onnx): 64x64 (the model's trained sizes: --size HxW picks others) x fp32")


def test_export_says_each_graph_set_it_ends_and_how_long_the_rest_will_take(tmp_path, capsys):
    assert main(["export", str(tmp_path / "e"), "--preset", "tiny", "--size", "64x64", "--size", "64x128"]) == 0
    lines = capsys.readouterr().out.splitlines()
    progress = [line for line in lines if line.startswith("graph set ")]
    assert len(progress) == 2, lines
    assert re.fullmatch(r"graph set 1 of 2 \(64x64 fp32\) in \d+ s; about \d+ s left", progress[0]), progress
    assert re.fullmatch(r"graph set 2 of 2 \(64x128 fp32\) in \d+ s", progress[1]), progress
    assert lines.index(progress[0]) < lines.index(progress[1]) and "exported" in lines[lines.index(progress[0]) - 1]


def test_on_step_is_called_after_every_step_and_its_error_stops_the_decode():
    dec = Decoder.load(preset="tiny")
    z = torch.randn(1, 16, 2, 2)
    calls = []
    dec.decode(z, seed=0, on_step=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]

    def stop(i, n):
        if i == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # a progress bar's Ctrl-C ends the decode there
        dec.decode(z, seed=0, on_step=stop)


def test_providers_choose_onnx_runtimes_execution_provider(tiny_engine_folder):
    from pid_sdk.errors import ConfigError

    z = torch.randn(1, 16, 2, 2)
    dec = Decoder.load(tiny_engine_folder, backend="onnxruntime", providers=["CPUExecutionProvider"])
    dec.decode(z, seed=0)
    assert dec.runtime.open_entry(64, 64, 1).ran["provider"] == "CPUExecutionProvider"
    with pytest.raises(ConfigError, match="knows no such execution provider"):
        Decoder.load(tiny_engine_folder, backend="onnxruntime", providers=["CUDAProvider"]).decode(z)
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.warns(UserWarning, match="None of the providers .'CUDAExecutionProvider'. is available"):
            Decoder.load(tiny_engine_folder, backend="onnxruntime", providers=["CUDAExecutionProvider"]).decode(z)
