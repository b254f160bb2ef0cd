"""The C++ readers of untrusted bytes (latent files, engine manifests) fuzzed under AddressSanitizer and UBSan: every
input ends in a result or a refusal with a message; no crash, no leak, no undefined behaviour (bindings/fuzz/)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "bindings" / "build" / "fuzz" / "fuzz_readers"

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (bindings/build.sh installs it)")


@pytest.fixture(scope="module")
def driver() -> Path:
    subprocess.run(["bash", str(ROOT / "bindings" / "fuzz" / "build.sh")], check=True, capture_output=True)
    return DRIVER


@pytest.mark.parametrize("seed", [1, 2])
def test_every_mutated_file_is_read_or_refused_with_a_message(driver, seed):
    run = subprocess.run([str(driver), "20000", str(seed)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert "runtime error" not in run.stderr and "Sanitizer" not in run.stderr, run.stderr[-3000:]
    counts = [int(word) for word in run.stdout.replace(",", " ").replace(";", " ").split() if word.isdigit()]
    total, latent_read, latent_refused, manifest_read, manifest_refused, silent = counts
    assert total == 20000 and silent == 0
    # each reader both read and refused inputs
    assert min(latent_read, latent_refused, manifest_read, manifest_refused) > 100, run.stdout


def test_the_sanitizers_are_really_on(driver):
    """The negative control: an out-of-bounds read on purpose must stop the driver with AddressSanitizer's report."""
    run = subprocess.run([str(driver), "--canary"], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "AddressSanitizer: heap-buffer-overflow" in run.stderr
