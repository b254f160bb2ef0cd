"""Every command block of README.md and docs/*.md, run as written: in a temporary folder (never the repository),
with `pid-sdk` on the PATH from this environment, and these placeholders made small:

- `model_ema_bf16.pth` (an official checkpoint) -> a tiny preset in the official file layout; in engines.md and the
  README's engine block, where the export takes the model's trained sizes, an SDK artefact of it (64x64);
- output sizes 2048x2048 / 1024x1024 -> 64x64 / 64x96; `latent.safetensors` / `latents.npy` -> latents of them;
- `engines/matrix.json` -> the same targets, with the tiny preset's size as its bucket;
- `[--flag value]` (an optional flag) -> the flag, passed; `pip install ...` -> nothing (this environment has it).

A block that cannot run here says why in SKIPPED, naming the test that runs its commands instead; a block in
neither list fails `test_every_command_block_is_run_or_says_why_not`, so a new block is run from the day it is
written."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```(?:bash|sh)\n(.*?)```", re.S)

# (file, first line of the block) -> why it does not run here, and what runs its commands instead
SKIPPED = {
    ("README.md", "bash scripts/demo.sh"): "the set-up itself: CI runs scripts/test.sh, tests/test_demo_scripts.py "
                                           "the demo",
    ("README.md", "pid-sdk export engines/demo --model pid_sdk/data/demo-flux1"): "AOTInductor compile and the C "
                                                                                  "build: tests/test_c_abi.py",
    ("README.md", "pip install -e \".[serve]\" && pid-sdk serve"): "a server: tests/test_serve.py",
    ("benchmarks.md", "bash scripts/gpu_check.sh"): "a GPU: scripts/gpu_check.sh on the device machine",
    ("embedding.md", "pid-sdk export engines/demo --model pid_sdk/data/demo-flux1"): "AOTInductor compile and the C "
                                                                                     "build: tests/test_c_abi.py",
    ("embedding.md", "cmake -S bindings -B bindings/build \\"): "bindings/build.sh runs these (scripts/test.sh)",
    ("embedding.md", "cc app.c -Ibindings/c -Lbindings/build -lpid_sdk"): "needs your app.c; tests/test_c_abi.py "
                                                                          "builds the sample the same way",
    ("guide.md", "bash scripts/setup.sh"): "the set-up itself: scripts/test.sh runs it",
    ("guide.md", "pip install -e ."): "the set-up itself: scripts/setup.sh runs it",
    ("quality.md", "python bench/quality.py --model pid_sdk/data/demo-flux1"): "6 photographs at full size: "
                                                                               "tests/test_bench.py at test size",
    ("serving.md", "pip install -e \".[serve]\""): "a server: tests/test_serve.py",
    ("serving.md", "curl --data-binary @samples/sample_latent_flux1.safetensors"): "a server: tests/test_serve.py",
    ("serving.md", "curl -s -D - -o out.png -H \"X-Request-Id: job-42\""): "a server: tests/test_serve.py",
    ("serving.md", "pid-sdk serve pid_sdk/data/demo-flux1 --port 8000 --metrics-port 8080 &"):
        "a server: tests/test_serve.py",
    ("training.md", "pid-sdk train runs/demo --preset demo-flux1"): "hours of training: tests/test_training.py",
    ("training.md", "pid-sdk distill build/dmd --teacher build/gpu-late"): "hours of distillation: "
                                                                          "tests/test_training.py",
    ("training.md", "python training/demo/pack_gpu_data.py"): "the GPU run: tests/test_demo_scripts.py",
}
# Lines of a block that run, that need what this machine cannot have: the reason.
NEEDS_ELSEWHERE = {"--target h100": "full TensorRT on an H100 (tests/test_tensorrt_runtime.py reads its path)"}
SIZES = {"2048x2048": "64x64", "1024x1024": "64x96"}


def blocks() -> list[tuple[str, str]]:
    return [(path.name, text) for path in DOCS for text in BLOCK.findall(path.read_text())]


def key(name: str, text: str) -> tuple[str, str]:
    return name, text.splitlines()[0]


def skipped(name: str, text: str) -> str | None:
    return next((why for (n, first), why in SKIPPED.items() if n == name and text.startswith(first)), None)


RUN = [(name, text) for name, text in blocks() if skipped(name, text) is None]


def test_every_command_block_is_run_or_says_why_not():
    """A skip that matches no block (a block rewritten or removed) is a stale reason: refused too."""
    found = blocks()
    assert len(RUN) >= 5
    stale = [k for k in SKIPPED if not any(n == k[0] and t.startswith(k[1]) for n, t in found)]
    assert stale == []


def as_run_here(text: str, names: dict[str, str]) -> str:
    """The block with its placeholders made small (module docstring)."""
    lines = []
    for line in text.replace("\\\n", " ").splitlines():
        command = line.split("  #")[0].strip()
        if not command or command.startswith("pip install"):
            continue
        if any(flag in command for flag in NEEDS_ELSEWHERE):
            continue
        command = re.sub(r"\[(--[\w-]+(?: [^\]]+)?)\]", r"\1", command)
        for big, small in {**SIZES, **names}.items():
            command = command.replace(big, small)
        lines.append(command)
    return "set -e\n" + "\n".join(lines) + "\n"


@pytest.fixture
def workdir(tmp_path):
    """A folder where the docs' relative paths resolve: the repository's read-only inputs linked in, everything a
    command writes landing here."""
    for name in ("pid_sdk", "samples"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / "engines").mkdir()
    return tmp_path


def placeholders(work: Path, name: str) -> dict[str, str]:
    from safetensors.torch import save_file

    from pid_sdk.checkpoints import save_artefact
    from pid_sdk.config import PRESETS
    from pid_sdk.model import build_model, randomize

    model = randomize(build_model(PRESETS["tiny"]), 0)
    torch.save({f"net.{k}": v for k, v in model.state_dict().items()}, work / "tiny_ema_bf16.pth")
    save_artefact(model, PRESETS["tiny"], work / "tiny-artefact", latent_space="flux1")
    save_file({"latent": torch.randn(16, 2, 2, generator=torch.Generator().manual_seed(0))},
              str(work / "latent.safetensors"))
    import numpy as np

    np.save(work / "latents.npy", np.random.default_rng(0).standard_normal((4, 16, 2, 2)).astype(np.float32))
    matrix = (ROOT / "engines" / "matrix.json").read_text()
    (work / "tiny-matrix.json").write_text(re.sub(r'"presets": \{.*?\n  \}', '"presets": {"tiny": '
                                                  '{"buckets": ["64x64"]}}', matrix, flags=re.S))
    engines = name in ("README.md", "engines.md")
    return {"model_ema_bf16.pth": "tiny-artefact" if engines else "tiny_ema_bf16.pth",
            "engines/matrix.json": "tiny-matrix.json"}


DOCUMENTS = sorted({name for name, _ in RUN})


@pytest.mark.parametrize("name", DOCUMENTS)
def test_the_documents_blocks_run_in_order_as_written(workdir, name):
    """A document's blocks are one sequence (engines.md: export, build, verify and compare one folder): they run
    in order in one folder, each block with `set -e`."""
    texts = [text for n, text in RUN if n == name]
    if any("--target rtx5090" in text or "--matrix" in text for text in texts):
        pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed (pip install 'pid-sdk[rtx]')")
    names = placeholders(workdir, name)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for text in texts:
        script = as_run_here(text, names)
        done = subprocess.run(["bash", "-c", script], cwd=workdir, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, f"{script}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
