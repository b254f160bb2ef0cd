"""Models by name (pid_sdk/registry.py): the registry's facts, and loads through huggingface_hub's own offline cache
laid out here with small files (HF_HUB_OFFLINE=1 in a fresh process: the library reads it at import)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pid_sdk
from pid_sdk import registry
from pid_sdk.config import PRESETS
from pid_sdk.errors import ConfigError
from pid_sdk.model import build_model, randomize

pytest.importorskip("huggingface_hub", reason="models by name need huggingface_hub")

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TEST_FILE = "checkpoints/PiD_res2k_sr4x_test_flux_distill_4step/model_ema_bf16.pth"


def lay_out_cache(root: Path, repo: str = "nvidia/PiD", file: str = TEST_FILE) -> Path:
    """A Hub cache as huggingface_hub writes it: refs/main naming a snapshot that holds the file (an official-format
    .pth: a plain dict of bf16 tensors under net.)."""
    folder = root / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    path = folder / "snapshots" / COMMIT / file
    path.parent.mkdir(parents=True)
    model = randomize(build_model(PRESETS["tiny"]), 3)
    torch.save({f"net.{k}": v.to(torch.bfloat16) for k, v in model.state_dict().items()}, path)
    return path


def offline(root: Path, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(root / "hub"), "HF_HOME": str(root / "home"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


REGISTER = (f"from pid_sdk import registry\nregistry.REGISTRY.append(registry.RegistryEntry('test-tiny', 'nvidia/PiD', "
            f"{TEST_FILE!r}, 'tiny', 'flux1', registry.NSCL))\n")


def test_a_model_loads_by_name_from_the_offline_cache_and_converts_once(tmp_path):
    file = lay_out_cache(tmp_path)
    code = REGISTER + """
import json, torch, pid_sdk
z = torch.randn(1, 16, 2, 2, generator=torch.Generator().manual_seed(0))
by_name = pid_sdk.Decoder.load("nvidia/PiD", variant="test-tiny")
direct = pid_sdk.Decoder.load(%r)
same = torch.equal(by_name.decode(z, steps=1), direct.decode(z, steps=1))
print(json.dumps({"source": by_name.source, "same": same}))
""" % str(file)
    run = offline(tmp_path, code)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.splitlines()[-1])
    folder = tmp_path / "pid-sdk" / "nvidia--PiD" / COMMIT / TEST_FILE
    assert result == {"source": str(folder), "same": True}
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["license"] == registry.NSCL and manifest["source"] == f"hf://nvidia/PiD/{TEST_FILE}"
    file.write_bytes(b"not a pickle")  # a later load reads the artefact, never the .pth again
    again = offline(tmp_path, REGISTER + "import pid_sdk; print(pid_sdk.Decoder.load('test-tiny').source)")
    assert again.returncode == 0 and again.stdout.strip().endswith(TEST_FILE), again.stderr[-3000:]


def test_a_missing_file_names_the_command_that_fetches_it(tmp_path):
    lay_out_cache(tmp_path)
    run = offline(tmp_path, "import pid_sdk; pid_sdk.Decoder.load('nvidia/PiD', variant='flux1-2k')")
    assert "ConfigError" in run.stderr and "HF_HUB_OFFLINE is set" in run.stderr, run.stderr[-2000:]
    assert "fix: pid-sdk download flux1-2k" in run.stderr
    cli = offline(tmp_path, "from pid_sdk.cli import main; raise SystemExit(main(['download', 'sd3-2kto4k']))")
    assert cli.returncode == 2 and "pid-sdk download sd3-2kto4k" in cli.stderr and "Traceback" not in cli.stderr
    url = "hf://Comfy-Org/PixelDiT/not_here.safetensors"  # outside the registry: the command takes the hf:// path
    cli = offline(tmp_path, f"from pid_sdk.cli import main; raise SystemExit(main(['info', {url!r}]))")
    assert cli.returncode == 2 and f"fix: pid-sdk download {url}" in cli.stderr, cli.stderr[-2000:]


def test_every_command_takes_an_hf_url_offline(tmp_path):
    lay_out_cache(tmp_path)
    url = f"hf://nvidia/PiD/{TEST_FILE}"
    latent = tmp_path / "z.safetensors"
    code = f"""
import torch
from safetensors.torch import save_file
from pid_sdk.cli import main
save_file({{"latent": torch.randn(16, 2, 2)}}, {str(latent)!r})
assert main(["info", {url!r}]) == 0
assert main(["decode", {str(latent)!r}, "--model", {url!r}, "-o", {str(tmp_path / "out.png")!r}, "--quiet"]) == 0
assert main(["download", {url!r}]) == 0
"""
    run = offline(tmp_path, code)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "licence:       unknown: not from the registry" in run.stdout and (tmp_path / "out.png").is_file()
    assert f"{url} -> {tmp_path / 'pid-sdk' / 'nvidia--PiD' / COMMIT / TEST_FILE}" in run.stdout


def test_the_registry_lists_every_released_checkpoint_with_a_network_it_loads_as(capsys):
    from pid_sdk.cli import main

    names = [e.name for e in registry.REGISTRY]
    assert len(names) == len(set(names)) == 19
    official = [e for e in registry.REGISTRY if e.repo == registry.OFFICIAL]
    assert sum("_distill_4step" in e.file for e in official) == 10
    assert sum("undistilled" in e.file for e in official) == 3
    assert all(e.preset in PRESETS and PRESETS[e.preset].adapter is not None for e in registry.REGISTRY)
    assert registry.find("nvidia/PiD", "sdxl-2kto4k").trained_sizes[0] == (4096, 4096)
    assert registry.find("comfy-flux1-2kto4k").rope_ref == 2048 and registry.find("siglip-2k").scale == 8
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in names) and "NSCLv1" in out


@pytest.mark.parametrize("source,variant,message", [
    ("nvidia/PiD", "flux3-2k", "No registered PiD model named 'flux3-2k' in nvidia/PiD"),
    ("Comfy-Org/PixelDiT", "flux1-2k", "No registered PiD model named 'flux1-2k' in Comfy-Org/PixelDiT"),
    ("hf://nvidia/PiD", None, "hf:// takes a repository and a file in it"),
    ("nvidia/PiD", None, "No registered PiD model named 'nvidia/PiD'"),
    ("hf://nvidia//x.pth", None, "hf:// takes a repository and a file in it"),
])
def test_a_name_the_registry_lacks_is_refused_with_the_names_it_has(source, variant, message):
    with pytest.raises(ConfigError, match=message) as err:
        pid_sdk.Decoder.load(source, variant=variant)
    assert "pid-sdk models" in str(err.value) or "hf://" in str(err.value)
    if source == "nvidia/PiD" and variant is None:
        assert "pass variant= one of those" in str(err.value) and "flux1-2k" in str(err.value)


def test_a_local_path_wins_over_a_name_and_takes_no_variant(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flux1-2k").mkdir()
    assert registry.is_hub_source("hf://a/b/c") and registry.is_hub_source("flux1-2k", None) is False
    assert registry.is_hub_source("nvidia/PiD", "flux1-2k") and registry.is_hub_source("nvidia/PiD")
    assert not registry.is_hub_source("/tmp/" + "x" * 5000)  # a path the system refuses is a path, not a name
    with pytest.raises(ConfigError, match="variant= and revision= name a model of the Hub, not a path"):
        pid_sdk.Decoder.load(str(tmp_path), revision="main")
