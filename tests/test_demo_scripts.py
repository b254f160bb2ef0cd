"""The demo's training scripts (scripts/train_demo.py, scripts/pack_gpu_data.py), run as a user runs them."""

import subprocess
import sys
from pathlib import Path

import pid_sdk

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT)


def test_train_demo_refuses_a_used_folder_without_resume(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.safetensors").write_bytes(b"another run's")
    res = run_script("train_demo.py", "--out", tmp_path / "run", "--minutes", "0")
    assert res.returncode == 2 and "not empty" in res.stderr and "--resume" in res.stderr
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == b"another run's"


def test_train_demo_records_the_growth_of_its_init():
    sys.path.insert(0, str(ROOT / "scripts"))
    from train_demo import initial_model

    model, record = initial_model(str(pid_sdk.DEMO_MODEL), {"patch_depth": 9})
    assert len(model.patch_blocks) == 9
    assert record.startswith(f"{pid_sdk.DEMO_MODEL} (") and record.endswith(") grown to patch_depth=9")


def test_pack_gpu_data_checks_init_before_the_old_pack_goes(tmp_path):
    old = tmp_path / "carry" / "images"
    old.mkdir(parents=True)
    (old / "kept.png").write_bytes(b"png")
    res = run_script("pack_gpu_data.py", "--out", tmp_path / "carry", "--init", tmp_path)
    assert res.returncode != 0 and "no SDK artefact" in res.stderr
    assert (old / "kept.png").read_bytes() == b"png"
