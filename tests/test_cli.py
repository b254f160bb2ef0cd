import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from pid_sdk.cli import main
from pid_sdk.config import PRESETS
from pid_sdk.model import build_model, randomize

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "sample_latent_flux1.safetensors"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_decode_the_bundled_sample(tmp_path, capsys):
    out = tmp_path / "demo.png"
    code, stdout, err = run(capsys, "decode", SAMPLE, "--preset", "tiny", "-o", out, "--quiet")
    assert code == 0, err
    img = Image.open(out)
    assert img.size == (512, 512) and "wrote" in stdout
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # the usual file permissions, not mkstemp's 0600


def test_decode_with_a_speed_setting_and_a_refused_one(tmp_path, capsys):
    out = tmp_path / "fast.png"
    code, _, err = run(capsys, "decode", SAMPLE, "--preset", "tiny", "-o", out, "--quiet", "--speed", "bf16")
    assert code == 0 and Image.open(out).size == (512, 512), err
    code, _, err = run(capsys, "decode", SAMPLE, "--preset", "tiny", "-o", tmp_path / "x.png", "--quiet",
                       "--speed", "bf16", "--precision", "fp32")
    assert code == 2 and "fp32 precision needs fp32 weights" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("suffix", [".pt", ".npy", ".safetensors"])
def test_decode_file_types_and_batches(tmp_path, capsys, suffix):
    z = torch.randn(2, 16, 2, 3)
    path = tmp_path / f"z{suffix}"
    if suffix == ".pt":
        torch.save(z, path)
    elif suffix == ".npy":
        np.save(path, z.numpy())
    else:
        save_file({"latent": z}, str(path))
    code, _, err = run(capsys, "decode", path, "--preset", "tiny", "-o", tmp_path / "o.png", "--steps", "2",
                       "--batch-size", "2", "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.glob("o_*.png")) == ["o_0.png", "o_1.png"]
    assert Image.open(tmp_path / "o_1.png").size == (96, 64)


def test_each_latent_of_a_file_has_its_own_seed_whatever_the_batch_size(tmp_path, capsys):
    """seed + i for the i-th latent: the images do not depend on --batch-size, and equal the API's decode with one
    seed per latent (a batched matrix product may round one pixel a level differently)."""
    from pid_sdk import Decoder

    z = torch.randn(3, 16, 2, 2, generator=torch.Generator().manual_seed(0))
    save_file({"latent": z}, str(tmp_path / "z.safetensors"))
    images = {}
    for size in (1, 2, 3):
        out = tmp_path / f"b{size}" / "o.png"
        out.parent.mkdir()
        code, _, err = run(capsys, "decode", tmp_path / "z.safetensors", "--preset", "tiny", "-o", out, "--seed", "7",
                           "--batch-size", size, "--steps", "2", "--quiet")
        assert code == 0, err
        images[size] = np.stack([np.asarray(Image.open(out.with_name(f"o_{i}.png"))) for i in range(3)]).astype(int)
    api = Decoder.load(preset="tiny").decode(z, seed=[7, 8, 9], steps=2, output="numpy").astype(int)
    for size, got in images.items():
        assert np.abs(got - api).max() <= 1, size
    assert np.abs(images[1][0] - images[1][1]).mean() > 5  # really other noise per latent


def test_the_latent_count_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from pid_sdk.decoder import Decoder

    save_file({"latent": torch.zeros(1, 16, 2, 2).expand(1025, 16, 2, 2).contiguous()}, str(tmp_path / "z.safetensors"))
    monkeypatch.setattr(Decoder, "load", classmethod(lambda *a, **k: pytest.fail("loaded the model first")))
    code, _, err = run(capsys, "decode", tmp_path / "z.safetensors", "--preset", "tiny", "-o", tmp_path / "o.png")
    assert code == 2 and "holds 1,025 latents" in err


def test_images_are_written_as_their_chunk_finishes(tmp_path, capsys, monkeypatch):
    """A long file does not hold every image in memory until the end: a failure in the second chunk leaves the
    first chunk's images written whole, and nothing of the second."""
    from pid_sdk.decoder import Decoder
    from pid_sdk.errors import NumericsError

    real, calls = Decoder.decode, []

    def fails_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            assert (tmp_path / "o_0.png").is_file() and (tmp_path / "o_1.png").is_file()  # written already
            raise NumericsError("simulated failure of the second chunk")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Decoder, "decode", fails_second)
    save_file({"latent": torch.randn(4, 16, 2, 2)}, str(tmp_path / "z.safetensors"))
    code, _, err = run(capsys, "decode", tmp_path / "z.safetensors", "--preset", "tiny", "-o", tmp_path / "o.png",
                       "--batch-size", "2", "--steps", "1", "--quiet")
    assert code == 2 and "simulated failure" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o_0.png", "o_1.png", "z.safetensors"]
    assert Image.open(tmp_path / "o_1.png").size == (64, 64)


def test_convert_then_info_then_decode(tmp_path, capsys):
    ckpt = tmp_path / "model_ema_bf16.pth"
    sd = randomize(build_model(PRESETS["tiny-pid-2k"]), 0).state_dict()
    torch.save({f"net.{k}": v.to(torch.bfloat16) for k, v in sd.items()}, ckpt)
    code, stdout, err = run(capsys, "convert", ckpt, tmp_path / "art", "--dtype", "fp32", "--latent-space", "sd3")
    assert code == 0, err
    code, stdout, _ = run(capsys, "info", tmp_path / "art")
    assert code == 0 and "latent space:  sd3" in stdout and "parameters:" in stdout and "  2048x2048: " in stdout
    assert "as windows of" in stdout.split("  8192x8192: ")[1]
    code, _, err = run(capsys, "decode", SAMPLE, "--model", tmp_path / "art", "-o", tmp_path / "x.png", "--quiet")
    assert code == 0, err


def test_info_presets(capsys):
    code, stdout, _ = run(capsys, "info", "--presets")
    assert code == 0 and "pid-2kto4k-v1.5-flux2" in stdout


@pytest.mark.parametrize("case", ["channels", "nan", "missing", "bad_model", "bad_space", "bad_output", "truncated",
                                  "image", "steps"])
def test_bad_input_is_a_message_exit_2_and_no_png(tmp_path, capsys, case):
    latent = tmp_path / "z.safetensors"
    z = torch.randn(1, 16, 2, 2)
    if case == "channels":
        z = torch.randn(1, 7, 2, 2)
    if case == "nan":
        z[0, 0, 0, 0] = float("nan")
    save_file({"latent": z}, str(latent))
    if case == "truncated":
        latent.write_bytes(latent.read_bytes()[:40])
    args = ["decode", latent, "--preset", "tiny", "-o", tmp_path / "out.png", "--quiet"]
    if case == "missing":
        args[1] = tmp_path / "nope.safetensors"
    if case == "bad_model":
        (tmp_path / "m.pth").write_bytes(b"not a checkpoint")
        args[2:4] = ["--model", tmp_path / "m.pth"]
    if case == "bad_space":
        args += ["--latent-space", "sd9"]
    if case == "bad_output":
        args[5] = tmp_path / "out.jpg"
    if case == "image":
        (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8")
        args[1] = tmp_path / "photo.jpg"
    if case == "steps":
        args += ["--steps", "0"]
    if case == "channels":  # refused before the progress bar opens, so the message is all stderr holds
        args.remove("--quiet")
    code, stdout, err = run(capsys, *args)
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err
    expected = {"channels": "wrong number of channels", "nan": "NaN or Inf", "missing": "No latent file",
                "bad_model": "corrupt, truncated or not a file written by torch.save",
                "bad_space": "Unknown latent space",
                "bad_output": "must be a .png file", "truncated": "truncated or corrupt",
                "image": "decodes latents, not images", "steps": "--steps must be"}[case]
    assert expected in err and "fix:" in err
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob(".*png"))


def test_installed_entry_point_runs_without_traceback(tmp_path):
    exe = Path(sys.executable).with_name("pid-sdk")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pid_sdk.cli"]
    args = ["decode", str(tmp_path / "none.npy"), "--preset", "tiny", "-o", str(tmp_path / "o.png")]
    res = subprocess.run(cmd + args,
                         capture_output=True, text=True, env={**os.environ, "PID_SDK_DEBUG": ""})
    assert res.returncode == 2 and "No latent file" in res.stderr and "Traceback" not in res.stderr


def test_a_failed_write_leaves_no_partial_png(tmp_path, capsys, monkeypatch):
    def broken_save(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    code, _, err = run(capsys, "decode", SAMPLE, "--preset", "tiny", "-o", tmp_path / "out.png", "--quiet",
                       "--steps", "1")
    assert code == 2 and "Cannot write" in err and "disk full" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
