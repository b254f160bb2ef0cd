"""Files judged by what they are: FIFOs, devices, folders and links out of a folder are refused promptly with a
PiDError, JSON is read within bounds, and a manifest edited after it was written is refused (pid_sdk/files.py)."""

import json
import os
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import pid_sdk
from pid_sdk.errors import CheckpointError, InputError, PiDError
from pid_sdk.files import MAX_JSON_NESTING, inside, nesting, open_regular, read_json


def promptly(call, seconds: float = 20.0):
    """The call's outcome (its value or the exception it raised); a failure if it does not end in `seconds`."""
    outcome = {}

    def run():
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 (handed to the test)
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"blocked for {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@pytest.fixture()
def artefact(tmp_path):
    cfg = pid_sdk.get_preset("tiny")
    return pid_sdk.save_artefact(pid_sdk.build_model(cfg), cfg, tmp_path / "art")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    from pid_sdk.latent_files import read_latent_file

    os.mkfifo(tmp_path / "latent.safetensors")
    with pytest.raises(InputError, match="is a FIFO"):
        promptly(lambda: read_latent_file(tmp_path / "latent.safetensors"))
    os.mkfifo(tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match="is a FIFO"):
        promptly(lambda: pid_sdk.Decoder.load(tmp_path / "model.pth"))


def test_a_manifest_that_is_a_fifo_does_not_hang_the_load(artefact):
    (artefact / "manifest.json").unlink()
    os.mkfifo(artefact / "manifest.json")
    with pytest.raises(CheckpointError, match="is a FIFO"):
        promptly(lambda: pid_sdk.Decoder.load(artefact))


def test_weights_linked_out_of_the_folder_are_refused(artefact, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    (artefact / "model.safetensors").rename(outside)
    (artefact / "model.safetensors").symlink_to(outside)
    with pytest.raises(CheckpointError, match="outside its folder"):
        promptly(lambda: pid_sdk.Decoder.load(artefact))
    (artefact / "model.safetensors").unlink()
    (artefact / "model.safetensors").symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match="outside its folder"):
        promptly(lambda: pid_sdk.Decoder.load(artefact))


def test_a_device_or_a_folder_is_not_a_file():
    with pytest.raises(CheckpointError, match="is a character device"):
        promptly(lambda: open_regular("/dev/zero", what="checkpoint"))
    with pytest.raises(CheckpointError, match="is not a pid-sdk model folder"):
        pid_sdk.Decoder.load(Path("/"))
    with pytest.raises(PiDError, match="is a folder"):
        open_regular("/tmp", what="latent file", error=InputError)


def test_a_path_too_long_is_a_pid_error():
    with pytest.raises(PiDError, match="the path is too long") as err:
        open_regular("/tmp/" + "x" * 5000, what="checkpoint")
    assert err.value.fix == "pass a shorter path"
    with pytest.raises(PiDError):
        pid_sdk.Decoder.load("/tmp/" + "x" * 5000 + ".pth")


def test_a_symbolic_link_inside_the_folder_is_followed_one_leading_out_is_not(tmp_path):
    (tmp_path / "a.onnx").write_bytes(b"x")
    (tmp_path / "link.onnx").symlink_to(tmp_path / "a.onnx")
    assert inside(tmp_path, "link.onnx") == tmp_path.resolve() / "link.onnx"
    (tmp_path / "out.onnx").symlink_to("/etc/hostname")
    for rel in ("out.onnx", "../x", "/etc/hostname", "", "a\0b", 7):
        with pytest.raises(CheckpointError, match="outside its folder"):
            inside(tmp_path, rel)


def test_a_file_over_its_bound_is_refused_before_it_is_read(tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 2048)
    with pytest.raises(CheckpointError, match="larger than any") as err:
        open_regular(big, what="manifest", max_bytes=1024)
    assert "2,048 bytes" in err.value.received


@pytest.mark.parametrize("text,match", [
    ("[" * 200_000 + "]" * 200_000, "nested 200000 deep"),
    ('{"a": ' + "1" * 5001 + "}", "a number of 5001 characters"),
    ('{"a": ' + "9" * 400 + "}", "a number of 400 characters"),
    ('{"a": NaN}', "NaN is not a JSON number"),
    ('{"a": 1e400}', "out of range"),
    ("\xff\xfe", "utf-8"),
])
def test_json_is_read_within_bounds(tmp_path, text, match):
    path = tmp_path / "m.json"
    path.write_bytes(text.encode("utf-8", errors="surrogateescape") if text != "\xff\xfe" else b"\xff\xfe")
    with open(path, "rb") as f, pytest.raises(CheckpointError, match=match):
        read_json(f, what="manifest")


def test_nesting_counts_brackets_outside_strings():
    assert nesting('{"a": [1, {"b": "[[[["}]}') == 3 and nesting("[]") == 1 and nesting('"[[["') == 0
    assert nesting('{"a": "\\\\"}') == 1 and MAX_JSON_NESTING >= 8


def test_a_nested_manifest_is_refused_before_it_is_parsed(artefact):
    (artefact / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(CheckpointError, match="not valid JSON within the SDK's bounds"):
        pid_sdk.Decoder.load(artefact)


def test_an_edited_engine_manifest_is_refused_unless_unverified(tiny_engine_folder, tmp_path):
    from conftest import copy_folder

    folder = copy_folder(tiny_engine_folder, tmp_path)
    data = json.loads((folder / "manifest.json").read_text())
    data["config"]["backbone"]["rope_theta"] = 5000.0
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="was edited after it was written"):
        pid_sdk.Decoder.load(folder)
    assert pid_sdk.Decoder.load(folder, verify=False).config.backbone.rope_theta == 5000.0
    del data["manifest_sha256"]
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="has no digest"):
        pid_sdk.Decoder.load(folder)


def test_a_latent_file_of_a_fifo_through_the_cli_exits_2(tmp_path, capsys):
    from pid_sdk.cli import main

    os.mkfifo(tmp_path / "z.safetensors")
    code = promptly(lambda: main(["decode", str(tmp_path / "z.safetensors"), "--preset", "tiny", "-o",
                                  str(tmp_path / "o.png")]))
    assert code == 2 and "is a FIFO" in capsys.readouterr().err and not (tmp_path / "o.png").exists()
    save_file({"latent": torch.zeros(1, 16, 2, 2)}, str(tmp_path / "real.safetensors"))
    (tmp_path / "link.safetensors").symlink_to(tmp_path / "real.safetensors")  # a user's own link: followed
    assert main(["decode", str(tmp_path / "link.safetensors"), "--preset", "tiny", "-o", str(tmp_path / "o.png"),
                 "--quiet", "--steps", "1"]) == 0
