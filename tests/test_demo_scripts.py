"""The demo's training scripts (training/demo/train_demo.py, training/demo/pack_gpu_data.py), run as a user runs
them."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import pid_sdk
from pid_sdk.checkpoints import load_artefact, read_artefact_manifest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "training" / "demo"


def script(name: str):
    """The module of training/demo/NAME.py, imported with its folder on sys.path as the scripts run."""
    if str(DEMO) not in sys.path:
        sys.path.insert(0, str(DEMO))
    return importlib.import_module(name)


def run_script(name: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DEMO / name), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT)


def test_train_demo_refuses_a_used_folder_without_resume(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.safetensors").write_bytes(b"another run's")
    res = run_script("train_demo.py", "--out", tmp_path / "run", "--minutes", "0")
    assert res.returncode == 2 and "not empty" in res.stderr and "--resume" in res.stderr
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == b"another run's"


@pytest.mark.parametrize("extra", ["--wallpapers", "--more-photographs"])
def test_train_demo_refuses_extra_photographs_beside_a_data_folder(tmp_path, extra):
    res = run_script("train_demo.py", "--out", tmp_path / "run", "--data", tmp_path, extra)
    assert res.returncode == 2 and "pack_gpu_data.py --wallpapers" in res.stderr
    assert not (tmp_path / "run").exists()


def test_train_demo_records_the_growth_of_its_init():
    initial_model = script("train_demo").initial_model
    depth = read_artefact_manifest(pid_sdk.DEMO_MODEL)["config"]["backbone"]["patch_depth"] + 1
    model, record = initial_model(str(pid_sdk.DEMO_MODEL), {"patch_depth": depth})
    assert len(model.patch_blocks) == depth
    assert record.startswith(f"{pid_sdk.DEMO_MODEL} (") and record.endswith(f") grown to patch_depth={depth}")


def test_pack_gpu_data_checks_init_before_the_old_pack_goes(tmp_path):
    old = tmp_path / "carry" / "images"
    old.mkdir(parents=True)
    (old / "kept.png").write_bytes(b"png")
    res = run_script("pack_gpu_data.py", "--out", tmp_path / "carry", "--init", tmp_path)
    assert res.returncode != 0 and "no SDK artefact" in res.stderr
    assert (old / "kept.png").read_bytes() == b"png"


def test_an_incomplete_photograph_pool_is_refused_with_its_fix(monkeypatch, tmp_path, capsys):
    """Without Debian's opencv-doc, scikit-learn or matplotlib the pool shrinks (35 photographs to 6): a run would
    silently train another model than the recorded one, so the demo's scripts refuse unless told --partial-data."""
    from pid_sdk.errors import InputError
    from training import data

    monkeypatch.setattr(data, "OPENCV_DOC", tmp_path / "absent")
    with pytest.raises(InputError, match="apt-get install opencv-doc"):
        data.package_images(complete=True)
    with pytest.warns(UserWarning, match="opencv-doc"):
        assert not any(name.startswith("opencv-doc.") for name in data.package_images())
    for module, args in ((script("train_demo"), ["--out", tmp_path / "run"]),
                         (script("pack_gpu_data"), ["--out", tmp_path / "carry"])):
        monkeypatch.setattr(sys, "argv", [module.__file__, *map(str, args)])
        with pytest.raises(SystemExit) as exit_:
            module.main()
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "apt-get install opencv-doc" in err and "--partial-data" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "carry").exists()


def pack(monkeypatch, out: Path, *args: str) -> int:
    """training/demo/pack_gpu_data.py's main on `out` with `args` (--partial-data: CI has neither opencv-doc nor the
    wallpapers)."""
    monkeypatch.setattr(sys, "argv", ["pack_gpu_data.py", "--out", str(out), "--partial-data", *args])
    return script("pack_gpu_data").main()


def packed_pool(out: Path, suffix: str) -> tuple[dict, list[Path]]:
    """The pool the pack was written from and the pack's image files, checked to be one file per image."""
    from training.data import DEMO_HELD_OUT, package_images

    pool = package_images(exclude=DEMO_HELD_OUT)
    files = sorted((out / "images").iterdir())
    assert [f.name for f in files] == sorted(f"{name}.{suffix}" for name in pool)
    return pool, files


def test_pack_gpu_data_writes_the_pool_as_lossless_webp_and_warns_over_the_carry_limit(monkeypatch, tmp_path, capsys,
                                                                                     tae_dir):
    """The GPU machine trains on exactly these files: they must hold the pool's pixels, and a pack that would not fit
    the device tool beside the working tree is said so."""
    import numpy as np
    from PIL import Image

    pack_gpu_data = script("pack_gpu_data")
    monkeypatch.setattr(pack_gpu_data, "CARRY_LIMIT", pack_gpu_data.tracked_bytes() + 1)  # any pack is over it
    assert pack(monkeypatch, tmp_path / "carry", "--tae-dir", str(tae_dir)) == 0
    assert "carry limit" in capsys.readouterr().err
    pool, files = packed_pool(tmp_path / "carry", "webp")
    for f in files[:3]:
        np.testing.assert_array_equal(np.asarray(Image.open(f).convert("RGB")), pool[f.stem], err_msg=f.name)
    assert (tmp_path / "carry" / "tae" / "taef1_encoder.safetensors").is_file()


def test_pack_gpu_data_jpeg_quality_writes_close_jpegs_and_refuses_a_quality_out_of_range(monkeypatch, tmp_path,
                                                                                         capsys, tae_dir):
    import numpy as np
    from PIL import Image

    out = tmp_path / "carry"
    with pytest.raises(SystemExit) as exit_:
        pack(monkeypatch, out, "--jpeg-quality", "0")
    assert exit_.value.code == 2 and "expected 1 to 100" in capsys.readouterr().err and not out.exists()
    assert pack(monkeypatch, out, "--jpeg-quality", "97", "--tae-dir", str(tae_dir)) == 0
    pool, files = packed_pool(out, "jpg")
    for f in files[:3]:
        got = np.asarray(Image.open(f).convert("RGB")).astype(np.float64)
        mse = ((got - pool[f.stem]) ** 2).mean()
        assert 0 < mse < 255**2 / 10**4.0, f"{f.name}: {10 * np.log10(255**2 / mse):.1f} dB"  # lossy, within 40 dB


@pytest.mark.slow
def test_gpu_train_demo_script_runs_both_phases_and_returns_weights_in_parts_on_the_cpu(monkeypatch, tmp_path,
                                                                                        tae_dir):
    """training/demo/gpu_train_demo.sh is what a lent GPU's few minutes run: a broken step there costs the whole stop,
    so it runs here on the CPU at the smallest scale, on a pack written as for the GPU (pack_gpu_data.py)."""
    import os

    carry = tmp_path / "carry"
    assert pack(monkeypatch, carry, "--tae-dir", str(tae_dir)) == 0
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DEVICE": "cpu",
           "BATCH": "2", "FLOW_MIN": "0.1", "TOTAL_S": "40", "TESTS": "0", "CARRY": str(carry),
           "OUT": str(tmp_path / "out"), "RUN": str(tmp_path / "run"), "AUGMENT": "1"}
    res = subprocess.run(["bash", str(DEMO / "gpu_train_demo.sh")], env=env, capture_output=True,
                         text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    steps = {}
    for artefact in ("half-demo-flux1", "demo-flux1"):
        folder = tmp_path / "out" / artefact
        parts = sorted(folder.glob("model.safetensors.part*"))
        (folder / "model.safetensors").write_bytes(b"".join(p.read_bytes() for p in parts))  # docs' `cat`
        manifest = load_artefact(folder).manifest  # checks the rejoined weights against the manifest's sha256
        steps[artefact] = int(manifest["source"].split("EMA after ")[1].split(" steps")[0])
    assert 0 < steps["half-demo-flux1"] < steps["demo-flux1"], steps
    assert "finished after" in (tmp_path / "out" / "train.log").read_text()
    assert "--augment" in json.loads((tmp_path / "run" / "data.json").read_text())["command"]


def test_ship_demo_averages_runs_of_one_config_and_refuses_another(tmp_path):
    from dataclasses import replace

    import torch

    from pid_sdk.config import PRESETS
    from pid_sdk.latents import get_latent_space
    from pid_sdk.model import build_model, randomize
    from training.trainer import TrainConfig, Trainer

    def save_run(name, model):
        Trainer(model, get_latent_space("flux1"), TrainConfig()).save(tmp_path / name)
        return model.state_dict()

    tiny = PRESETS["tiny"]
    a, b = (save_run(n, randomize(build_model(tiny), seed)) for n, seed in (("a", 0), ("b", 1)))
    res = run_script("ship_demo.py", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "ship")
    assert res.returncode == 0, res.stderr
    shipped = load_artefact(tmp_path / "ship").model.state_dict()
    key = next(k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k]))
    assert torch.equal(shipped[key].float(), ((a[key] + b[key]) / 2).to(torch.bfloat16).float())
    source = read_artefact_manifest(tmp_path / "ship")["source"]
    assert "mean of the EMA weights of 2 runs, after 0 and 0 steps" in source

    other = replace(tiny, backbone=replace(tiny.backbone, rope_mode="plain"))  # the same keys, another network
    save_run("c", randomize(build_model(other), 0))
    res = run_script("ship_demo.py", tmp_path / "a", tmp_path / "c", "--out", tmp_path / "ship2")
    assert res.returncode != 0 and "only runs of one config can be averaged" in res.stderr
    assert not (tmp_path / "ship2").exists()


def test_ship_demo_ships_a_distillation_runs_student_with_its_teachers_lineage(tmp_path, tae_dir):
    import torch
    from conftest import real_image
    from PIL import Image

    from pid_sdk.checkpoints import save_artefact
    from pid_sdk.cli import main
    from pid_sdk.config import PRESETS
    from pid_sdk.model import build_model, randomize

    tiny = PRESETS["tiny"]
    save_artefact(randomize(build_model(tiny), 0), tiny, tmp_path / "teacher", source="the teacher's own chain")
    (tmp_path / "images").mkdir()
    arr = (real_image("coffee", 96)[0].permute(1, 2, 0).numpy() * 255).astype("uint8")
    Image.fromarray(arr).save(tmp_path / "images" / "coffee.png")
    assert main(["distill", str(tmp_path / "dmd"), "--teacher", str(tmp_path / "teacher"), "--data",
                 str(tmp_path / "images"), "--tae-dir", str(tae_dir), "--size", "64", "--fake-updates", "1",
                 "--steps", "1"]) == 0
    source = read_artefact_manifest(tmp_path / "dmd" / "student")["source"]
    assert source.startswith("pid-sdk distill (DMD2) from") and source.endswith("the teacher: the teacher's own chain")

    res = run_script("ship_demo.py", tmp_path / "dmd", "--out", tmp_path / "ship")
    assert res.returncode == 0, res.stderr
    student = load_artefact(tmp_path / "dmd" / "student").model.state_dict()
    shipped = load_artefact(tmp_path / "ship")
    assert read_artefact_manifest(tmp_path / "ship")["dtype"] == "bfloat16" and shipped.manifest["source"] == source
    assert all(torch.equal(shipped.model.state_dict()[k].float(), v.to(torch.bfloat16).float())
               for k, v in student.items() if v.is_floating_point())
    res = run_script("ship_demo.py", tmp_path / "dmd", tmp_path / "dmd", "--out", tmp_path / "ship2")
    assert res.returncode != 0 and "ship its student alone" in res.stderr and not (tmp_path / "ship2").exists()
