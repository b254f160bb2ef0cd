"""The catalogue of refused inputs: each case provokes one PiDError through the public API or the CLI's own
functions; docs/errors.md is its rendering, checked by tests/test_errors.py so the two cannot drift.

    .venv/bin/python tests/error_catalogue.py > docs/errors.md
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pid_sdk  # noqa: E402
from conftest import sealed  # noqa: E402
from pid_sdk.errors import PiDError  # noqa: E402

CASES: list[tuple[str, str, Callable]] = []  # (area, what was passed, fn(tmp, decoder) that must raise)


def case(area: str, given: str):
    def register(fn):
        CASES.append((area, given, fn))
        return fn

    return register


Z = (1, 16, 2, 2)


def z(*shape, **kw):
    return torch.zeros(*(shape or Z), **kw)


# --- latents ---------------------------------------------------------------------------------------------------
case("latent", "a Python list")(lambda t, d: d.decode([[1.0]]))
case("latent", "an integer tensor")(lambda t, d: d.decode(z(dtype=torch.int64)))
case("latent", "a complex tensor")(lambda t, d: d.decode(z(dtype=torch.complex64)))
case("latent", "a numpy array of Python objects")(lambda t, d: d.decode(np.array([[object()]])))
case("latent", "a meta-device tensor")(lambda t, d: d.decode(z(device="meta")))
case("latent", "a tensor of rank 2")(lambda t, d: d.decode(torch.zeros(16, 4)))
case("latent", "an empty tensor")(lambda t, d: d.decode(z(1, 16, 0, 4)))
case("latent", "15 channels for flux1")(lambda t, d: d.decode(z(1, 15, 2, 2)))
case("latent", "an odd-sized 32-channel FLUX.2 latent")(
    lambda t, d: pid_sdk.Decoder.load(preset="tiny-pid-2k-flux2").decode(z(1, 32, 5, 4)))
case("latent", "a broadcast view of a 100000x100000 latent")(
    lambda t, d: d.decode(z(1, 16, 1, 1).expand(1, 16, 100_000, 100_000)))
case("latent", "a batch above max_pixels")(lambda t, d: d.check(z(65, 16, 64, 64)))
case("latent", "NaN values")(lambda t, d: d.decode(torch.full(Z, float("nan"))))
case("latent", "a finite 1e30")(lambda t, d: d.decode(torch.full(Z, 1e30)))
case("latent", "an SDXL latent to a FLUX.1 model")(lambda t, d: d.decode(z(1, 4, 2, 2), latent_space="sdxl"))
case("latent", "an unknown latent space")(lambda t, d: d.decode(z(), latent_space="sd9"))
case("window", "a window of 50x64 pixels (not whole latent cells)")(
    lambda t, d: d.decode(z(1, 16, 2, 5), window=(50, 64)))
case("window", "an overlap as large as the window")(
    lambda t, d: d.decode(z(1, 16, 2, 5), window=(64, 64), overlap=64))
case("window", "overlap= without a window")(lambda t, d: d.decode(z(1, 16, 2, 5), overlap=32))
case("window", "an unknown blend")(lambda t, d: d.decode(z(1, 16, 2, 5), window=(64, 64), blend="soft"))
case("window", "decode --window wide")(lambda t, d: _cli_decode(t, t / "o.png", "--window", "wide"))
case("load", "a variant the registry lacks")(lambda t, d: pid_sdk.Decoder.load("nvidia/PiD", variant="flux3-2k"))
case("load", "hf:// without a file")(lambda t, d: pid_sdk.Decoder.load("hf://nvidia/PiD"))
case("load", "variant= beside a local path")(lambda t, d: pid_sdk.Decoder.load(str(t), variant="flux1-2k"))
case("window", "max_memory='lots'")(lambda t, d: d.decode(z(1, 16, 2, 5), max_memory="lots"))
case("window", "a max_memory no window of the output fits in")(
    lambda t, d: d.decode(z(1, 16, 6, 6), max_memory="1MiB"))
case("latent", "a sparse tensor")(lambda t, d: d.decode(torch.randn(Z).to_sparse()))
case("latent", "a nested tensor")(
    lambda t, d: d.decode(torch.nested.nested_tensor([torch.zeros(16, 2, 2)], layout=torch.jagged)))

# --- decode arguments --------------------------------------------------------------------------------------------
case("argument", "steps=0")(lambda t, d: d.decode(z(), steps=0))
case("argument", "steps=True")(lambda t, d: d.decode(z(), steps=True))
case("argument", "seed=2**70")(lambda t, d: d.decode(z(), seed=2**70))
case("argument", 'seed="abc"')(lambda t, d: d.decode(z(), seed="abc"))
case("argument", 'latent_sigma="abc"')(lambda t, d: d.decode(z(), latent_sigma="abc"))
case("argument", "latent_sigma=1.5 (flow latent)")(lambda t, d: d.decode(z(), latent_sigma=1.5))
case("argument", "latent_sigma as a view of 10**10 values")(
    lambda t, d: d.decode(z(), latent_sigma=torch.zeros(1).expand(10**10)))
case("argument", "guidance=nan")(lambda t, d: d.decode(z(), sampler="teacher", guidance=float("nan")))
case("argument", 'sampler="euler"')(lambda t, d: d.decode(z(), sampler="euler"))
case("argument", 'output="jpeg"')(lambda t, d: d.decode(z(), output="jpeg"))
case("argument", "stats of the wrong shape")(
    lambda t, d: d.decode(z(), normalized=False, stats={"mean": torch.zeros(3), "var": torch.ones(3)}))
case("argument", "a raw FLUX.2 latent without stats")(
    lambda t, d: pid_sdk.Decoder.load(preset="tiny-pid-2k-flux2").decode(z(1, 32, 4, 4), normalized=False))
case("argument", "text embeddings of the wrong width")(lambda t, d: d.decode(z(), text_embeddings=z(1, 5, 31)))
case("argument", "text embeddings with NaN")(
    lambda t, d: d.decode(z(), text_embeddings=torch.full((1, 5, 32), float("nan"))))
case("argument", "prompt= without a text encoder")(lambda t, d: d.decode(z(), prompt="a cat"))
case("argument", "prompt= and text_embeddings= together")(
    lambda t, d: d.decode(z(), prompt="a cat", text_embeddings=z(1, 5, 32)))
case("argument", "the teacher sampler without a negative embedding")(lambda t, d: d.decode(z(), sampler="teacher"))
case("argument", 'normalized="no"')(lambda t, d: d.decode(z(), normalized="no"))
case("argument", "on_step=5")(lambda t, d: d.decode(z(), on_step=5))

# --- loading -------------------------------------------------------------------------------------------------------
case("load", "Decoder.load() with nothing")(lambda t, d: pid_sdk.Decoder.load())
case("load", "Decoder.load(123)")(lambda t, d: pid_sdk.Decoder.load(123))
case("load", "an unknown preset")(lambda t, d: pid_sdk.Decoder.load(preset="huge"))
case("load", 'device="gpu0"')(lambda t, d: pid_sdk.Decoder.load(preset="tiny", device="gpu0"))
case("load", 'precision="fp64"')(lambda t, d: pid_sdk.Decoder.load(preset="tiny", precision="fp64"))
case("load", 'backend="onnxruntime" for a checkpoint')(
    lambda t, d: pid_sdk.Decoder.load(_artefact(t), backend="onnxruntime"))
case("load", "a path that does not exist")(lambda t, d: pid_sdk.Decoder.load(t / "nope.pth"))
case("load", "an empty checkpoint")(lambda t, d: pid_sdk.Decoder.load(_write(t / "e.pth", b"")))
case("load", "random bytes as a .pth")(
    lambda t, d: pid_sdk.Decoder.load(_write(t / "r.pth", np.random.default_rng(0).bytes(4096))))
case("load", "a pickle that runs code")(lambda t, d: pid_sdk.Decoder.load(_code_pickle(t)))
case("load", "the bare PixelDiT backbone")(lambda t, d: pid_sdk.Decoder.load(preset="tiny-pixeldit-1.3b"))
case("load", 'trust_pickle="no" (a truthy string is not consent)')(
    lambda t, d: pid_sdk.Decoder.load(_code_pickle(t), trust_pickle="no"))
case("load", 'verify="yes"')(lambda t, d: pid_sdk.Decoder.load(_artefact(t), verify="yes"))
case("load", 'speed=["fast"]')(lambda t, d: pid_sdk.Decoder.load(_artefact(t), speed=["fast"]))
case("load", "text_encoder=42")(lambda t, d: pid_sdk.Decoder.load(_artefact(t), text_encoder=42))
case("checkpoint", "a repack with a [0]-shaped tensor")(
    lambda t, d: _repack(t, lambda sd: {**sd, "s_embedder.proj.weight": torch.zeros(0)}))
case("checkpoint", "a repack missing the pixel blocks")(
    lambda t, d: _repack(t, lambda sd: {k: v for k, v in sd.items() if not k.startswith("pixel_blocks.")}))
case("checkpoint", "a repack with an extra key")(lambda t, d: _repack(t, lambda sd: {**sd, "patch_blocks.foo": z(2)}))
case("checkpoint", "a repack with an int64 norm weight")(lambda t, d: _repack(
    t, lambda sd: {**sd, "patch_blocks.0.attn.q_norm_x.weight": torch.ones(16, dtype=torch.int64)}))
case("checkpoint", "a .pth holding a list")(lambda t, d: (torch.save([z()], t / "m.pth"),
                                                          pid_sdk.Decoder.load(t / "m.pth")))
case("artefact", "a manifest that is a JSON list")(lambda t, d: _edit_artefact(t, lambda m: [m]))
case("artefact", "a manifest edited by hand (rope_theta)")(lambda t, d: _edit_artefact(t, lambda m: {
    **m, "config": {**m["config"], "backbone": {**m["config"]["backbone"], "rope_theta": 20000.0}}}, seal=False))
case("artefact", "a manifest without its digest")(lambda t, d: _edit_artefact(
    t, lambda m: {k: v for k, v in m.items() if k != "manifest_sha256"}, seal=False))
case("artefact", "a manifest nested 200000 deep")(lambda t, d: (
    (_artefact(t) / "manifest.json").write_text("[" * 200000 + "]" * 200000), pid_sdk.Decoder.load(_artefact(t))))
case("artefact", "weights linked to /dev/zero")(lambda t, d: (
    (_artefact(t) / "model.safetensors").unlink(), (_artefact(t) / "model.safetensors").symlink_to("/dev/zero"),
    pid_sdk.Decoder.load(_artefact(t))))
case("artefact", "a manifest without its config")(lambda t, d: _edit_artefact(t, lambda m: {**m, "config": None}))
case("artefact", "patch_depth 10**7 in the config")(lambda t, d: _edit_artefact(t, lambda m: {
    **m, "config": {**m["config"], "backbone": {**m["config"]["backbone"], "patch_depth": 10**7}}}))
case("artefact", "a manifest without sha256")(
    lambda t, d: _edit_artefact(t, lambda m: {k: v for k, v in m.items() if k != "sha256"}))
case("artefact", "edited weights")(lambda t, d: _tamper_artefact(t))

# --- latent files ------------------------------------------------------------------------------------------------
case("file", "a folder as the latent file")(lambda t, d: _read(t))
case("file", "a latent file that does not exist")(lambda t, d: _read(t / "nope.safetensors"))
case("file", "a FIFO as the latent file")(lambda t, d: (os.mkfifo(t / "fifo.safetensors"),
                                                     _read(t / "fifo.safetensors")))
case("file", "a device as the latent file")(lambda t, d: _read(Path("/dev/zero")))
case("file", "a path longer than the system takes")(lambda t, d: _read(t / ("x" * 5000 + ".safetensors")))
case("file", "an image instead of a latent")(lambda t, d: _read(_write(t / "photo.jpg", b"\xff\xd8")))
case("file", "an unknown suffix")(lambda t, d: _read(_write(t / "z.bin", b"x")))
case("file", "a .npy whose header claims more than the file holds")(lambda t, d: _read(_lying_npy(t)))
case("file", "a .npy of strings")(lambda t, d: _read(_npy(t, np.array(["a", "b"]))))
case("file", "a .safetensors with several tensors, none named latent")(
    lambda t, d: _read(_safetensors(t, {"a": z(), "b": z()})))
case("file", "a .safetensors of integers")(lambda t, d: _read(_safetensors(t, {"latent": z(dtype=torch.int32)})))
case("file", "a truncated .safetensors")(
    lambda t, d: _read(_write(t / "z.safetensors", _safetensors(t, {"latent": z()}).read_bytes()[:40])))
case("file", "a 2 KB .pt holding a 640 GB broadcast view")(lambda t, d: _read(_huge_view(t)))
case("file", "a 2 KB .pt holding 100000 latents (a broadcast view)")(
    lambda t, d: _cli_decode_file(_many_view(t), t / "o.png"))

# --- output --------------------------------------------------------------------------------------------------------
case("output", "an output name that is not .png")(lambda t, d: _cli_decode(t, t / "o.jpg"))
case("output", "an output folder that does not exist")(lambda t, d: _cli_decode(t, t / "nope" / "o.png"))
case("output", "an output path under a regular file")(lambda t, d: _cli_decode(t, _write(t / "f", b"x") / "o.png"))
case("output", "an output path that is a folder")(lambda t, d: _cli_decode(t, _mkdir(t / "d.png")))
case("output", "an output folder that cannot be written (/proc)")(lambda t, d: _cli_decode(t, Path("/proc/o.png")))
case("output", "--batch-size 0")(lambda t, d: _cli_decode(t, t / "o.png", "--batch-size", "0"))

# --- engine folders ------------------------------------------------------------------------------------------------
case("engines", "a manifest path leading out of the folder")(lambda t, d: _engine_manifest(t, weights="../x"))
case("engines", "a truncated engine manifest")(lambda t, d: _engine_manifest(t, truncate=True))
case("engines", "an engine entry with a 10**18-element tensor")(lambda t, d: _engine_manifest(t, huge_io=True))
case("engines", "text and adapter graphs swapped, hashes and digest made right")(
    lambda t, d: _lying_engines(t, lambda e: e["files"].update(text=e["files"]["adapter"], adapter=e["files"]["text"])))
case("engines", "an fp8 label over fp32 graphs, digest made right")(
    lambda t, d: _lying_engines(t, lambda e: e.update(precision="fp8-fp32")))
case("engines", "a graph that is a symbolic link out of the folder")(lambda t, d: _linked_out_engines(t))
case("engines", "an unknown backend")(lambda t, d: pid_sdk.Decoder.load(_engine_dir(t), backend="openvino"))
case("engines", "export --size 0x0")(lambda t, d: _cli("export", str(t / "set"), "--preset", "tiny", "--size", "0x0"))
case("engines", "export --size 100000x100000")(
    lambda t, d: _cli("export", str(t / "set"), "--preset", "tiny", "--size", "100000x100000"))
case("engines", "export --format aoti --precision fp8")(
    lambda t, d: _cli("export", str(t / "set"), "--preset", "tiny", "--size", "64x64", "--format", "aoti",
                      "--precision", "fp8"))
case("engines", "backend='aoti' on a folder without AOTInductor packages")(
    lambda t, d: pid_sdk.Decoder.load(_engine_dir(t), backend="aoti"))
case("engines", "precision='fp8' for a folder of fp32 graphs")(
    lambda t, d: pid_sdk.Decoder.load(_engine_dir(t), backend="onnxruntime", precision="fp8"))
case("engines", "precision='fp16' on the PyTorch fallback")(
    lambda t, d: pid_sdk.Decoder.load(_engine_dir(t), backend="pytorch", precision="fp16"))
case("engines", "a build matrix naming an unknown target")(lambda t, d: _matrix(t))
case("engines", "build --version-compatible for TensorRT-RTX")(lambda t, d: _rtx_version_compatible())
case("numerics", "weights that make the network return Inf")(lambda t, d: _inf_model())


# --- helpers -------------------------------------------------------------------------------------------------------
def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _read(path: Path):
    from pid_sdk.latent_files import read_latent_file

    return read_latent_file(path)


def _npy(t: Path, array) -> Path:
    np.save(t / "z.npy", array)
    return t / "z.npy"


def _lying_npy(t: Path) -> Path:
    with (t / "z.npy").open("wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (1, 16, 999, 999)})
        f.write(bytes(64))
    return t / "z.npy"


def _safetensors(t: Path, tensors: dict) -> Path:
    from safetensors.torch import save_file

    save_file(tensors, str(t / "z.safetensors"))
    return t / "z.safetensors"


def _huge_view(t: Path) -> Path:
    torch.save(z(1, 16, 1, 1).expand(1, 16, 100_000, 100_000), t / "z.pt")
    return t / "z.pt"


def _many_view(t: Path) -> Path:
    torch.save(z(1, 16, 1, 16).expand(100_000, 16, 1, 16), t / "many.pt")
    return t / "many.pt"


def _code_pickle(t: Path) -> Path:
    torch.save({"config": Path("x")}, t / "code.pth")  # a pathlib object: weights_only refuses the global
    return t / "code.pth"


def _artefact(t: Path) -> Path:
    out = t / "art"
    if not out.exists():
        pid_sdk.save_artefact(pid_sdk.build_model(pid_sdk.get_preset("tiny")), pid_sdk.get_preset("tiny"), out)
    return out


def _edit_artefact(t: Path, change, seal: bool = True):
    path = _artefact(t) / "manifest.json"
    edited = change(json.loads(path.read_text()))
    path.write_text(json.dumps(sealed(edited) if seal else edited))
    return pid_sdk.Decoder.load(_artefact(t))


def _tamper_artefact(t: Path):
    path = _artefact(t) / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    return pid_sdk.Decoder.load(_artefact(t))


def _cli(*args: str):
    """A CLI command's own refusal, raised instead of printed (main() would turn it into exit 2)."""
    from pid_sdk.cli import _command, _parser

    parsed = _parser().parse_args(list(args))
    return _command(parsed.run)(parsed)


def _cli_decode(t: Path, out: Path, *extra: str):
    return _cli_decode_file(_safetensors(t, {"latent": z()}), out, *extra)


def _cli_decode_file(latent: Path, out: Path, *extra: str):
    return _cli("decode", str(latent), "--preset", "tiny", "-o", str(out), "--quiet", *extra)


def _engine_dir(t: Path) -> Path:
    from pid_sdk.runtime.manifest import FORMAT, VERSION

    folder = t / "engines"
    folder.mkdir(exist_ok=True)
    manifest = {"format": FORMAT, "format_version": VERSION, "preset": "tiny",
                "config": pid_sdk.get_preset("tiny").to_dict(), "model_sha256": "0" * 64,
                "weights": "weights.safetensors", "entries": []}
    (folder / "manifest.json").write_text(json.dumps(sealed(manifest)))
    return folder


def _engine_manifest(t: Path, weights: str | None = None, truncate: bool = False, huge_io: bool = False):
    folder = _engine_dir(t)
    data = json.loads((folder / "manifest.json").read_text())
    if weights:
        data["weights"] = weights
    if huge_io:
        io = {"inputs": [{"name": "x", "shape": [10**6, 10**6, 10**6], "dtype": "float"}], "outputs": []}
        data["entries"] = [{"backend": "tensorrt", "bucket": [64, 64], "batch": 1, "precision": "bf16",
                            "files": {g: f"h100/{g}.plan" for g in ("text", "adapter", "denoiser")}, "sha256": {},
                            "io": {g: io for g in ("text", "adapter", "denoiser")}}]
    text = json.dumps(sealed(data))
    (folder / "manifest.json").write_text(text[:100] if truncate else text)
    return pid_sdk.Decoder.load(folder)


_EXPORTED: list[Path] = []  # the tiny preset's 64x64 ONNX graphs, exported once per process


def _exported(t: Path) -> Path:
    import shutil

    from export.export_folder import export_engine_set
    from pid_sdk.buckets import Bucket

    if not _EXPORTED:
        _EXPORTED.append(Path(tempfile.mkdtemp(prefix="pid-catalogue-")) / "engines")
        export_engine_set(_EXPORTED[0], preset="tiny", sizes=[Bucket(64, 64)], log=lambda *_: None)
    return Path(shutil.copytree(_EXPORTED[0], t / "engines"))


def _lying_engines(t: Path, change):
    """A real engine folder whose first entry's labels are edited, its digest made right again."""
    folder = _exported(t)
    data = json.loads((folder / "manifest.json").read_text())
    change(data["entries"][0])
    (folder / "manifest.json").write_text(json.dumps(sealed(data)))
    return pid_sdk.Decoder.load(folder, backend="onnxruntime").decode(z(), seed=0)


def _linked_out_engines(t: Path):
    folder = _exported(t)
    rel = json.loads((folder / "manifest.json").read_text())["entries"][0]["files"]["text"]
    (t / "outside.onnx").write_bytes((folder / rel).read_bytes())
    (folder / rel).unlink()
    (folder / rel).symlink_to(t / "outside.onnx")
    return pid_sdk.Decoder.load(folder, backend="onnxruntime").decode(z(), seed=0)


def _repack(t: Path, edit):
    from safetensors.torch import save_file

    from pid_sdk.checkpoints import load_checkpoint

    model = pid_sdk.build_model(pid_sdk.get_preset("tiny"))
    save_file(edit({k: v.contiguous() for k, v in model.state_dict().items()}), str(t / "repack.safetensors"))
    return load_checkpoint(t / "repack.safetensors")


def _matrix(t: Path):
    from export.build import load_matrix

    (t / "m.json").write_text('{"targets": {"mi300": {}}, "presets": {}}')
    return load_matrix(t / "m.json")


def _rtx_version_compatible():
    from export.build import BuildOptions, check_options

    return check_options("tensorrt_rtx", "rtx5090", BuildOptions(version_compatible=True))


def _inf_model():
    dec = pid_sdk.Decoder.load(preset="tiny", seed=0)
    with torch.no_grad():
        dec.runtime.model.final_layer.linear.weight[0, 0] = float("inf")
    return dec.decode(z(), seed=0)


# --- rendering -----------------------------------------------------------------------------------------------------
def run_case(fn) -> PiDError:
    """The PiDError the case raises, in a fresh temporary folder (named <tmp> in the rendering)."""
    decoder = pid_sdk.Decoder.load(preset="tiny", seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            fn(Path(tmp), decoder)
        except PiDError as exc:
            exc.tmp = tmp
            return exc
    raise AssertionError("the case was accepted")


def _cell(text: object, tmp: str) -> str:
    return str(text).replace(tmp, "<tmp>").replace("|", "\\|").replace("\n", " ")


def render() -> str:
    lines = ["# Refused inputs", "",
             "Every input pid-sdk refuses ends in a `PiDError` (exit 2 at the CLI, one message, no traceback): what",
             "was wrong, what was expected, and the fix. This page is generated from `tests/error_catalogue.py`,",
             "whose cases the test suite runs (`tests/test_errors.py` checks that this page is their rendering):",
             "", "    .venv/bin/python tests/error_catalogue.py > docs/errors.md", "",
             f"{len(CASES)} kinds of refused input.", "",
             "| area | given | error | fix |", "|---|---|---|---|"]
    for area, given, fn in CASES:
        exc = run_case(fn)
        lines.append(f"| {area} | {given} | `{type(exc).__name__}`: {_cell(exc.what, exc.tmp)} | "
                     f"{_cell(exc.fix or '', exc.tmp)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
