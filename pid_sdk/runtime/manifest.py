"""The engine-set manifest: one folder, many graphs / engines, each entry with its bucket, precision and hashes.

    engine_dir/
      manifest.json
      weights.safetensors                          the shared weights (PyTorch fallback, refit of stripped plans)
      onnx/<H>x<W>-b<B>-<precision>/{text,adapter,denoiser}.onnx
      <target>/<H>x<W>-b<B>-<precision>/{text,adapter,denoiser}.plan
      aoti/<device>/<H>x<W>-b<B>-<precision>/{text,adapter,denoiser}.pt2   AOTInductor packages (target = device)
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pid_sdk.checkpoints import sha256_file, usual_permissions
from pid_sdk.config import PiDConfig
from pid_sdk.errors import CheckpointError, InputError

MANIFEST = "manifest.json"
FORMAT = "pid-sdk-engines"
VERSION = 1
GRAPHS = ("text", "adapter", "denoiser")
BACKENDS = ("onnx", "tensorrt", "tensorrt_rtx", "aoti")


@dataclass(frozen=True)
class Entry:
    """One graph set: three files that together run a decode for one bucket, batch and precision."""

    backend: str
    bucket: tuple[int, int]
    batch: int
    precision: str
    files: dict[str, str]  # graph -> path relative to the engine folder
    sha256: dict[str, str]
    io: dict  # graph -> {"inputs": [...], "outputs": [...]} with name, shape, dtype
    target: str | None = None  # rtx5090, h100, gb200 ...
    sm: tuple[int, ...] = ()  # compute capabilities the plans run on (x10: 90, 100, 120)
    trt_version: str | None = None
    hardware_compatibility: str = "none"
    stripped: bool = False
    version_compatible: bool = False
    source: str | None = None  # the onnx entry a plan was built from
    attention_dtype: str | None = None  # set when attention runs in another dtype than the graph
    torch_version: str | None = None  # aoti: the torch that compiled the packages (they run on its minor release)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["bucket"], d["sm"] = list(self.bucket), list(self.sm)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Entry":
        """An entry read from a manifest, its types and sizes checked: a hand-edited shape must not make the
        runtime allocate an arbitrary buffer."""
        d = dict(d)
        d["bucket"], d["sm"] = tuple(d["bucket"]), tuple(d.get("sm", ()))
        entry = cls(**d)
        problems = _entry_problems(entry)
        if problems:
            raise ValueError("; ".join(problems)[:300])
        return entry

    def input_shape(self, graph: str, name: str) -> tuple[int, ...]:
        return tuple(next(t["shape"] for t in self.io[graph]["inputs"] if t["name"] == name))

    @property
    def key(self) -> str:
        return f"{self.backend}:{self.target or '-'}:{self.bucket[0]}x{self.bucket[1]}:b{self.batch}:{self.precision}"


MAX_SIDE = 65536
MAX_TENSOR_ELEMENTS = 1 << 32


def _entry_problems(e: Entry) -> list[str]:
    def ints(values, low, high) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in values)

    def strings(mapping) -> bool:
        return isinstance(mapping, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items())

    problems = []
    if e.backend not in BACKENDS:
        problems.append(f"backend {e.backend!r} is not one of {BACKENDS}")
    if len(e.bucket) != 2 or not ints(e.bucket, 1, MAX_SIDE) or not ints([e.batch], 1, 1024):
        problems.append(f"bucket {e.bucket!r} / batch {e.batch!r} out of range")
    if not strings(e.files) or set(e.files) != set(GRAPHS) or not strings(e.sha256):
        problems.append(f"files must map {GRAPHS} to paths, sha256 paths to hex digests")
    if not isinstance(e.precision, str) or not ints(e.sm, 0, 1000):
        problems.append("precision must be a string, sm a list of compute capabilities")
    if not all(isinstance(v, bool) for v in (e.stripped, e.version_compatible)):
        problems.append("stripped and version_compatible must be true or false")
    try:
        for graph in GRAPHS:
            for t in e.io[graph]["inputs"] + e.io[graph]["outputs"]:
                named = isinstance(t["name"], str) and isinstance(t["dtype"], str)
                if not (named and ints(t["shape"], 0, MAX_SIDE * 64) and math.prod(t["shape"]) <= MAX_TENSOR_ELEMENTS):
                    problems.append(f"io tensor {t.get('name')!r} of {graph}: bad name, dtype or shape")
    except (KeyError, TypeError, AttributeError):
        problems.append(f"io must give each of {GRAPHS} its inputs and outputs (name, shape, dtype)")
    return problems


@dataclass
class Manifest:
    config: PiDConfig
    model_sha256: str
    entries: list[Entry]
    weights: str | None = None  # relative path of the shared weights file

    def to_dict(self) -> dict:
        return {"format": FORMAT, "format_version": VERSION, "preset": self.config.name,
                "config": self.config.to_dict(), "model_sha256": self.model_sha256, "weights": self.weights,
                "entries": [e.to_dict() for e in self.entries]}

    def add(self, entry: Entry) -> None:
        self.entries = [e for e in self.entries if e.key != entry.key] + [entry]


def is_engine_dir(path: str | Path) -> bool:
    p = Path(path) / MANIFEST
    if not p.is_file():
        return False
    try:
        data = json.loads(p.read_text())
        return isinstance(data, dict) and data.get("format") == FORMAT
    except (OSError, ValueError):  # damaged: still an engine folder if it says so, so the error says "re-export"
        with p.open("rb") as f:
            return f'"{FORMAT}"'.encode() in f.read(4096)


def read_manifest(folder: str | Path) -> Manifest:
    """The folder's manifest, every path in it checked to stay inside the folder before anything is opened."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{folder} has no engine manifest ({MANIFEST}).",
                              fix="export graphs into it with `pid-sdk export` first")
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("format_version") != VERSION:
            got = (f"format={data.get('format')} version={data.get('format_version')}" if isinstance(data, dict)
                   else type(data).__name__)
            raise CheckpointError(f"{path} is not a pid-sdk engine manifest of a supported version.",
                                  received=str(got)[:200], expected=f"format={FORMAT} version={VERSION}",
                                  fix="re-export the engine set (pid-sdk export)")
        if not isinstance(data["config"], dict) or not isinstance(data["entries"], list):
            raise TypeError("config must be an object and entries a list")
        manifest = Manifest(PiDConfig.from_dict(data["config"]), data["model_sha256"],
                            [Entry.from_dict(e) for e in data["entries"]], data.get("weights"))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path} is damaged.", received=f"{type(exc).__name__}: {exc}"[:200],
                              fix="re-export the engine set (pid-sdk export)") from None
    for rel in manifest_paths(manifest):
        inside(folder, rel)
    return manifest


def manifest_paths(manifest: Manifest) -> list[str]:
    """Every file path a manifest names: the shared weights, and each entry's graphs and hashed files."""
    paths = [manifest.weights] if manifest.weights is not None else []
    for e in manifest.entries:
        paths += list(e.files.values()) + list(e.sha256)
    return paths


def inside(folder: str | Path, rel: object) -> Path:
    """`folder / rel`, refused unless it stays inside the folder: no absolute path, no `..`, no link leading out."""
    root = Path(folder).resolve()
    bad = not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts
    if not bad:
        path = root / rel
        bad = not path.resolve().is_relative_to(root)
    if bad:
        raise CheckpointError(f"The manifest of {folder} names a file outside its folder.", received=repr(rel)[:200],
                              expected="a relative path inside the engine folder (no absolute path, no '..', "
                                       "no symbolic link leading out)",
                              fix="rebuild the folder with pid-sdk export / build; never edit paths by hand")
    return path


def write_manifest(folder: str | Path, manifest: Manifest) -> None:
    folder = Path(folder)
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=folder)
    with os.fdopen(fd, "w") as f:
        json.dump(manifest.to_dict(), f, indent=2)
        f.write("\n")
    usual_permissions(tmp)
    os.replace(tmp, folder / MANIFEST)


def verify_files(folder: str | Path, entry: Entry, *, verify: bool = True) -> None:
    """Every file of the entry (graphs and their external weights) is inside the folder, exists and matches its
    sha256. `verify=False` skips the hashes (the caller's explicit opt-out), never the paths."""
    unhashed = set(entry.files.values()) - set(entry.sha256)
    if unhashed and verify:
        raise CheckpointError(f"The manifest lists files of {entry.key} without a sha256.", received=sorted(unhashed),
                              fix="rebuild this entry (pid-sdk export / pid-sdk build), or pass verify=False "
                                  "(CLI: --no-verify) to run unverified files")
    for rel in sorted(set(entry.files.values()) | set(entry.sha256)):
        verify_file(folder, rel, entry.sha256.get(rel) if verify else None, what=f"{rel} of {entry.key}")


def verify_file(folder: str | Path, rel: str, want: str | None, *, what: str) -> Path:
    """`folder / rel` after checking it stays inside, exists and (unless `want` is None) matches its sha256."""
    path = inside(folder, rel)
    if not path.is_file():
        raise CheckpointError(f"{what} is missing.", received=str(path),
                              fix="rebuild it (pid-sdk export / pid-sdk build)")
    if want is not None:
        digest = sha256_file(path)
        if digest != want:
            raise CheckpointError(f"{what} does not match the manifest's sha256 (modified, truncated or replaced).",
                                  received=digest, expected=want, fix="rebuild it (pid-sdk export / pid-sdk build)")
    return path


def verify_weights(folder: str | Path, manifest: Manifest, *, verify: bool = True) -> Path:
    """The shared weights file, inside the folder and matching `model_sha256`; a missing hash is an error unless
    the caller opts out with `verify=False`."""
    if not manifest.weights:
        raise CheckpointError("The engine set carries no weights for the PyTorch fallback.",
                              fix="re-export it with pid-sdk export (weights.safetensors is written beside the graphs)")
    if verify and not (isinstance(manifest.model_sha256, str) and len(manifest.model_sha256) == 64):
        raise CheckpointError(f"The manifest of {folder} has no sha256 for {manifest.weights}.",
                              received=repr(manifest.model_sha256)[:80], expected="model_sha256: 64 hex digits",
                              fix="re-export the engine set, or pass verify=False (CLI: --no-verify) to load "
                                  "unverified weights")
    return verify_file(folder, manifest.weights, manifest.model_sha256 if verify else None,
                       what=f"{manifest.weights} (the shared weights)")


def check_static_inputs(entry: Entry, text, latent) -> None:
    """The text embedding and latent have the entry's static shapes (graphs and engines take no other)."""
    for name, graph, got in (("text", "text", text), ("latent", "adapter", latent)):
        want = entry.input_shape(graph, name)
        if tuple(got.shape) != want:
            raise InputError(f"The {name} does not fit this engine's static shape.", received=tuple(got.shape),
                             expected=f"{want} (bucket {entry.bucket}, batch {entry.batch})",
                             fix="pass full-length text embeddings; decode with the engine of this size")
