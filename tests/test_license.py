"""The weights' licence travels with them: registry (or --license) -> artefact -> engine manifest -> what info,
verify, Decoder.license and the server say; weights of unknown licence say so."""

import json

import pytest

import pid_sdk
from conftest import copy_folder
from pid_sdk.cli import main
from pid_sdk.registry import UNKNOWN, license_of

LICENCE = "NSCLv1 (test)"


@pytest.fixture(scope="module")
def licensed(tmp_path_factory):
    """An artefact converted with --license (from a small checkpoint), and an engine folder exported from it."""
    import torch

    from pid_sdk.config import get_preset
    from pid_sdk.model import build_model, randomize

    root = tmp_path_factory.mktemp("licence")
    torch.save(randomize(build_model(get_preset("tiny")), 1).state_dict(), root / "tiny.pth")
    assert main(["convert", str(root / "tiny.pth"), str(root / "art"), "--preset", "tiny", "--license", LICENCE]) == 0
    assert main(["export", str(root / "engines"), "--model", str(root / "art"), "--size", "64x64"]) == 0
    return root


def test_convert_records_the_licence_and_info_prints_it(licensed, capsys):
    assert json.loads((licensed / "art" / "manifest.json").read_text())["license"] == LICENCE
    assert main(["info", str(licensed / "art")]) == 0
    assert f"licence:       {LICENCE}" in capsys.readouterr().out
    assert pid_sdk.Decoder.load(licensed / "art").license == LICENCE


def test_the_engine_folder_carries_the_artefacts_licence_to_info_verify_and_the_decoder(licensed, capsys):
    folder = licensed / "engines"
    assert json.loads((folder / "manifest.json").read_text())["license"] == LICENCE
    assert main(["info", str(folder)]) == 0 and f"licence:       {LICENCE}" in capsys.readouterr().out
    assert main(["verify", str(folder)]) == 0 and f"licence: {LICENCE}" in capsys.readouterr().out
    assert pid_sdk.Decoder.load(folder, backend="pytorch").license == LICENCE
    assert license_of(str(folder)) == license_of(str(licensed / "art")) == LICENCE


def test_weights_of_unknown_licence_say_so_everywhere(tiny_engine_folder, tmp_path, capsys):
    """The shared tiny folder was exported from random weights; --license records one on a later export."""
    assert "license" not in json.loads((tiny_engine_folder / "manifest.json").read_text())
    assert main(["info", str(tiny_engine_folder)]) == 0 and f"licence:       {UNKNOWN}" in capsys.readouterr().out
    assert license_of(str(tiny_engine_folder)) == UNKNOWN and pid_sdk.Decoder.load(preset="tiny").license is None
    folder = copy_folder(tiny_engine_folder, tmp_path)
    assert main(["export", str(folder), "--size", "32x64", "--license", "Apache-2.0"]) == 0
    assert json.loads((folder / "manifest.json").read_text())["license"] == "Apache-2.0"
