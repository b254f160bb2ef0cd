"""Hostile and careless input: refused from metadata before allocating, never a NaN image, never a partial file,
never a raw exception. The fuzz suite (test_fuzz.py) covers the classes at random; these pin each finding."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import pid_sdk
from pid_sdk.cli import main
from pid_sdk.errors import CheckpointError, ConfigError, InputError, NumericsError, PiDError
from pid_sdk.latent_files import read_latent_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    return pid_sdk.Decoder.load(preset="tiny", seed=0)


def cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err and (code == 0 or err.startswith("error: ")), err
    return code, err


# --- 1. size from metadata, before any data is touched ---------------------------------------------------------
def huge_view_pt(path: Path) -> Path:
    torch.save(torch.zeros(1, 16, 1, 1).expand(1, 16, 100_000, 100_000), path)
    return path


def lying_npy(path: Path) -> Path:
    """A .npy whose header claims a 1000x1000 latent (64 MB) over 256 bytes of data."""
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (1, 16, 1000, 1000)})
        f.write(bytes(256))
    return path


def test_broadcast_views_are_refused_by_shape(tiny):
    with pytest.raises(InputError, match="too large"):
        tiny.decode(torch.zeros(1, 16, 1, 1).expand(1, 16, 100_000, 100_000))
    with pytest.raises(InputError, match="too large"):
        tiny.decode(np.broadcast_to(np.zeros((1, 16, 1, 1), np.float32), (1, 16, 100_000, 100_000)))


def test_files_are_judged_by_their_metadata(tmp_path):
    assert huge_view_pt(tmp_path / "z.pt").stat().st_size < 4096
    with pytest.raises(InputError, match="claims 160,000,000,000 values"):
        read_latent_file(tmp_path / "z.pt")
    with pytest.raises(InputError, match="truncated or its header lies"):
        read_latent_file(lying_npy(tmp_path / "z.npy"))


def test_memory_stays_bounded_for_hostile_files(tmp_path):
    """In a child process limited to 8 GiB of address space: the 640 GB view and the lying header end in a clean
    error (exit 2) with a small peak, never an allocation attempt."""
    for path in (huge_view_pt(tmp_path / "z.pt"), lying_npy(tmp_path / "z.npy")):
        code = ("import re, resource, sys; resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30)); "
                "from pid_sdk.cli import main; rc = main(sys.argv[1:]); "  # VmHWM: this process image's peak
                "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]); sys.exit(rc)")
        res = subprocess.run([sys.executable, "-c", code, "decode", str(path), "--preset", "tiny", "-o",
                              str(tmp_path / "o.png"), "--quiet"], capture_output=True, text=True)
        assert res.returncode == 2 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr, res.stderr
        assert int(res.stdout.strip().splitlines()[-1]) < 2 << 20  # peak resident set under 2 GiB (in KiB)
        assert not (tmp_path / "o.png").exists()


def test_export_of_an_impossible_size_is_refused_before_anything_is_written(tmp_path, capsys):
    for size in ("100000x100000", "0x0", "-64x64", "63x64"):
        code, err = cli(capsys, "export", tmp_path / "set", "--preset", "tiny", f"--size={size}")
        assert code == 2 and ("Cannot export" in err or "latent cells" in err), err
    assert list(tmp_path.iterdir()) == []


def test_request_pixels_are_bounded_and_the_bound_can_be_raised(tiny):
    z = torch.zeros(65, 16, 64, 64)  # 65 x 2048x2048 pixels
    with pytest.raises(InputError, match="more output pixels than this decoder allows") as err:
        tiny.check(z)
    assert "Decoder.max_pixels" in str(err.value)
    small = pid_sdk.Decoder.load(preset="tiny")
    small.max_pixels = 64 * 64
    small.check(torch.zeros(1, 16, 2, 2))
    with pytest.raises(InputError, match="more output pixels"):
        small.check(torch.zeros(2, 16, 2, 2))


# --- 2. never a NaN image -----------------------------------------------------------------------------------------
def test_finite_but_absurd_latents_and_nan_guidance_are_refused(tiny):
    with pytest.raises(InputError, match="values no LDM produces"):
        tiny.decode(torch.full((1, 16, 2, 2), 1e30))
    with pytest.raises(InputError, match="guidance must be a finite number"):
        tiny.decode(torch.zeros(1, 16, 2, 2), sampler="teacher", guidance=float("nan"),
                    negative_embeddings=torch.zeros(1, 8, 32))


def test_a_non_finite_decode_is_an_error_naming_the_step():
    dec = pid_sdk.Decoder.load(preset="tiny", seed=0)
    with torch.no_grad():
        dec.runtime.model.final_layer.linear.weight[0, 0] = float("inf")
    with pytest.raises(NumericsError, match="NaN or Inf") as err:
        dec.decode(torch.randn(1, 16, 2, 2), seed=0)
    assert "call 1 of 4" in str(err.value)


# --- 3. argument types --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"latent_sigma": "abc"}, "latent_sigma must be a number"), ({"latent_sigma": None}, "latent_sigma must be"),
    ({"seed": 2**70}, "seed must be an integer"), ({"seed": "abc"}, "seed must be an integer"),
    ({"steps": True}, "steps must be an integer"), ({"steps": 2.0}, "steps must be an integer"),
    ({"stats": {"mean": torch.zeros(3), "var": torch.ones(3)}, "normalized": False}, "wrong shape"),
    ({"stats": [1, 2], "normalized": False}, "stats must be a dict"),
    ({"output": None}, "Unknown output"), ({"sampler": 3}, "Unknown sampler"),
])
def test_argument_types(tiny, kwargs, match):
    with pytest.raises(InputError, match=match) as err:
        tiny.decode(torch.zeros(1, 16, 2, 2), **kwargs)
    assert err.value.fix


@pytest.mark.parametrize("latent,match", [
    (torch.zeros(1, 16, 2, 2, device="meta"), "meta device"),
    (torch.zeros(1, 16, 2, 2, dtype=torch.complex64), "complex dtype"),
    (np.zeros((1, 16, 2, 2), np.complex64), "complex dtype"),
    (np.array([[object()]]), "Python-object dtype"),
])
def test_latents_without_real_values(tiny, latent, match):
    with pytest.raises(InputError, match=match):
        tiny.decode(latent)


# --- 4. manifests of the wrong structure, bounded configurations --------------------------------------------------
@pytest.fixture()
def artefact(tmp_path):
    return pid_sdk.save_artefact(pid_sdk.build_model(pid_sdk.get_preset("tiny")), pid_sdk.get_preset("tiny"),
                                 tmp_path / "art")


@pytest.mark.parametrize("edit,match", [
    (lambda d: [d], "not a pid-sdk manifest"),
    (lambda d: {k: v for k, v in d.items() if k != "config"}, "damaged: config: Field required"),
    (lambda d: {**d, "sha256": ["x"]}, "damaged: sha256: Input should be a valid dictionary"),
    (lambda d: {**d, "config": {**d["config"], "backbone": {**d["config"]["backbone"], "patch_depth": 10**7}}},
     "patch_depth must be a number in"),
    (lambda d: {**d, "config": {**d["config"], "backbone": {**d["config"]["backbone"], "hidden_size": "big"}}},
     "hidden_size must be a number"),
    (lambda d: {**d, "config": {**d["config"], "adapter": {**d["config"]["adapter"], "extra": 1}}},
     "could not be read"),
])
def test_artefact_manifests_are_validated_before_building(artefact, edit, match):
    """Edits sealed again with a right digest (what an attacker can do): the schema and the configuration's own
    bounds refuse them before anything is built."""
    from conftest import sealed

    path = artefact / "manifest.json"
    path.write_text(json.dumps(sealed(edit(json.loads(path.read_text())))))
    with pytest.raises(PiDError, match=match):
        pid_sdk.Decoder.load(artefact)


def test_engine_manifests_are_validated(tiny_engine_folder, tmp_path):
    from conftest import copy_folder

    f = copy_folder(tiny_engine_folder, tmp_path)
    data = json.loads((f / "manifest.json").read_text())
    for broken, match in [
        ({**data, "entries": [{**data["entries"][0], "io": {"text": {"inputs": [{"name": "text",
                                                                                 "shape": [10**6, 10**6, 10**6],
                                                                                 "dtype": "float"}]}}}]}, "damaged"),
        ({**data, "entries": [{**data["entries"][0], "bucket": [0, -1]}]}, "damaged"),
        ({**data, "entries": {"a": 1}}, "damaged"),
    ]:
        (f / "manifest.json").write_text(json.dumps(broken))
        with pytest.raises(CheckpointError, match=match) as err:
            pid_sdk.Decoder.load(f)
        assert "re-export" in str(err.value)
    (f / "manifest.json").write_text(json.dumps(data)[:200])  # truncated: still named an engine folder
    with pytest.raises(CheckpointError, match="not valid JSON") as err:
        pid_sdk.Decoder.load(f)
    assert "re-export the engine set" in str(err.value) and "convert" not in str(err.value)


# --- 5. corrupt is not unsafe -------------------------------------------------------------------------------------
def test_random_bytes_are_corrupt_not_a_pickle_to_trust(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    for trust in (False, True):
        with pytest.raises(CheckpointError, match="corrupt") as err:
            pid_sdk.Decoder.load(path, trust_pickle=trust)
        assert "trust_pickle" not in str(err.value)


# --- 6, 7. no partial files, destinations checked first ----------------------------------------------------------
def test_a_failed_export_leaves_nothing(tmp_path, monkeypatch):
    import export.export_folder as engine_set
    from export.export_folder import export_engine_set
    from pid_sdk.buckets import Bucket

    def fails(*args, **kwargs):
        raise ConfigError("simulated exporter failure")

    monkeypatch.setattr(engine_set, "export_graph_set", fails)
    with pytest.raises(ConfigError, match="simulated"):
        export_engine_set(tmp_path / "set", preset="tiny", sizes=[Bucket(64, 64)], log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_into_an_existing_folder_leaves_it_as_it_was(tiny_engine_folder, tmp_path, monkeypatch):
    import export.export_folder as engine_set
    from conftest import copy_folder
    from export.export_folder import export_engine_set
    from pid_sdk.buckets import Bucket

    f = copy_folder(tiny_engine_folder, tmp_path)
    before = {p: p.read_bytes() for p in f.rglob("*") if p.is_file()}
    real = engine_set.export_graph_set
    calls = []

    def fails_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ConfigError("simulated exporter failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_set, "export_graph_set", fails_second)
    with pytest.raises(ConfigError, match="simulated"):
        export_engine_set(f, sizes=[Bucket(64, 128), Bucket(128, 64)], log=lambda *_: None)
    assert {p: p.read_bytes() for p in f.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("where", ["under_a_file", "proc", "folder", "missing"])
def test_unwritable_destinations_are_refused_before_decoding(tmp_path, capsys, monkeypatch, where):
    import pid_sdk.decoder as decoder

    latent = tmp_path / "z.safetensors"
    save_file({"latent": torch.zeros(1, 16, 2, 2)}, str(latent))
    (tmp_path / "file").write_text("x")
    out = {"under_a_file": tmp_path / "file" / "o.png", "proc": Path("/proc/o.png"),
           "folder": tmp_path / "d.png", "missing": tmp_path / "nope" / "o.png"}[where]
    if where == "folder":
        out.mkdir()
    monkeypatch.setattr(decoder.Decoder, "decode", lambda *a, **k: pytest.fail("decoded before checking"))
    code, err = cli(capsys, "decode", latent, "--preset", "tiny", "-o", out, "--quiet")
    expected = {"under_a_file": "is a file, not a folder", "proc": "Cannot write /proc/o.png",
                "folder": f"The output {out} is a folder", "missing": "does not exist"}[where]
    assert code == 2 and expected in err and "fix:" in err


# --- 8. messages -------------------------------------------------------------------------------------------------
def test_cli_messages_give_a_fix(tmp_path, capsys):
    latent = tmp_path / "z.safetensors"
    save_file({"a": torch.zeros(1, 16, 2, 2), "b": torch.zeros(1, 16, 2, 2)}, str(latent))
    for args, text in [
        (["decode", latent, "--preset", "tiny", "-o", tmp_path / "o.png"], "holds 2 tensors"),
        (["decode", tmp_path, "--preset", "tiny", "-o", tmp_path / "o.png"], "is a folder, not a regular file"),
        (["decode", latent, "--preset", "tiny", "-o", tmp_path / "o.jpg"], "must be a .png"),
        (["decode", latent, "--preset", "tiny", "-o", tmp_path / "o.png", "--steps", "0"], "--steps must be"),
        (["decode", latent, "--preset", "tiny", "-o", tmp_path / "o.png", "--batch-size", "0"], "--batch-size must"),
    ]:
        code, err = cli(capsys, *args)
        assert code == 2 and text in err and "fix:" in err, err
    save_file({"latent": torch.zeros(1, 16, 0, 2)}, str(latent))
    code, err = cli(capsys, "decode", latent, "--preset", "tiny", "-o", tmp_path / "o.png")
    assert code == 2 and "empty" in err and "fix:" in err


def test_info_presets_names_the_shipped_demo_models_size(capsys):
    assert main(["info", "--presets"]) == 0
    out = capsys.readouterr().out
    assert "DEMO_MODEL (shipped weights)     pid-sdk demo decoder: FLUX.1 latents -> 4x, 11.5M" in out


def test_unknown_device_and_precision_give_a_fix():
    for kwargs in ({"device": "gpu0"}, {"precision": "fp64"}):
        with pytest.raises(ConfigError) as err:
            pid_sdk.Decoder.load(preset="tiny", **kwargs)
        assert err.value.fix, kwargs
