"""AOTInductor export of one graph set: the text, adapter and denoiser graphs compiled ahead of time into PyTorch
packages (`.pt2`) that libtorch runs without Python (bindings/cpp) and `torch._inductor.aoti_load_package` runs
from Python (backend="aoti"). Static shapes, float32 inputs and outputs: the same contract as the ONNX graphs."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from export.onnx_export import OUTPUT_NAMES, PRECISIONS, example_inputs, graph_modules
from pid_sdk.buckets import Bucket
from pid_sdk.checkpoints import sha256_file
from pid_sdk.config import PiDConfig
from pid_sdk.errors import ConfigError
from pid_sdk.runtime.manifest import Entry

AOTI_DEVICES = ("cpu", "cuda")
AOTI_PRECISIONS = ("fp32", "bf16")


def check_aoti_options(device: str, precision: str) -> None:
    if device not in AOTI_DEVICES:
        raise ConfigError("Unknown AOTInductor device.", received=device, expected=", ".join(AOTI_DEVICES),
                          fix="pass --device cpu (or cuda on a CUDA host)")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("A CUDA AOTInductor package is compiled on a CUDA host.", received="no CUDA GPU here",
                          fix="export --device cpu here, and --device cuda on the GPU host")
    if precision not in AOTI_PRECISIONS:
        raise ConfigError("AOTInductor packages are exported in fp32 or bf16.", received=precision,
                          expected=", ".join(AOTI_PRECISIONS), fix="pass --precision fp32")


def export_aoti_set(model: nn.Module, cfg: PiDConfig, bucket: Bucket, folder: Path, *, batch: int = 1,
                    device: str = "cpu", precision: str = "fp32", log=print) -> Entry:
    """Write aoti/<device>/<H>x<W>-b<B>-<precision>/{text,adapter,denoiser}.pt2 under `folder`; return their
    manifest entry."""
    check_aoti_options(device, precision)
    dtype = PRECISIONS[precision]
    model = model.to(device=device, dtype=dtype).eval()
    rel_dir = Path("aoti") / device / f"{bucket.name}-b{batch}-{precision}"
    (folder / rel_dir).mkdir(parents=True, exist_ok=True)
    inputs = example_inputs(cfg, bucket, batch)
    files, hashes, io_spec = {}, {}, {}
    for name, module in graph_modules(model, cfg, bucket, dtype, device).items():
        rel = rel_dir / f"{name}.pt2"
        args = tuple(t.to(device) for t in inputs[name].values())
        t0 = time.perf_counter()
        outputs = compile_package(module, args, folder / rel)
        files[name], hashes[str(rel)] = str(rel), sha256_file(folder / rel)
        io_spec[name] = {"inputs": [_tensor_spec(k, t) for k, t in inputs[name].items()],
                         "outputs": [_tensor_spec(k, t) for k, t in zip(OUTPUT_NAMES[name], outputs)]}
        log(f"compiled {rel} in {time.perf_counter() - t0:.1f}s ({(folder / rel).stat().st_size / 2**20:.1f} MiB)")
    return Entry("aoti", (bucket.height, bucket.width), batch, precision, files, hashes, io_spec, target=device,
                 torch_version=torch.__version__)


def compile_package(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path) -> tuple[torch.Tensor, ...]:
    """torch.export the module at these static shapes, compile it with AOTInductor into `path`; return the eager
    outputs (their shapes go into the manifest)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch._inductor").setLevel(logging.ERROR)
        outputs = module(*args)
        program = torch.export.export(module, args, strict=False)
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return outputs if isinstance(outputs, tuple) else (outputs,)


def _tensor_spec(name: str, t: torch.Tensor) -> dict:
    return {"name": name, "shape": list(t.shape), "dtype": "float"}
