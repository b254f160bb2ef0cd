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

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from pid_sdk.checkpoints import usual_permissions
from pid_sdk.config import PiDConfig
from pid_sdk.errors import CheckpointError, InputError
from pid_sdk.files import MAX_JSON_BYTES, check_digest, digest, inside, open_in_folder, read_json, sha256_of

MANIFEST = "manifest.json"
FORMAT = "pid-sdk-engines"
VERSION = 1
GRAPHS = ("text", "adapter", "denoiser")
ENTRY_BACKENDS = ("onnx", "tensorrt", "tensorrt_rtx", "aoti")


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
        """An entry read from a manifest, every field typed and bounded by its schema (`EntrySchema`) first: a
        hand-edited shape must not make the runtime allocate an arbitrary buffer, a label must be one the SDK
        writes."""
        checked = EntrySchema.model_validate(d).model_dump()
        checked["bucket"], checked["sm"] = tuple(checked["bucket"]), tuple(checked["sm"])
        return cls(**checked)

    def input_shape(self, graph: str, name: str) -> tuple[int, ...]:
        return tuple(next(t["shape"] for t in self.io[graph]["inputs"] if t["name"] == name))

    @property
    def variant(self) -> str:
        """The precision, and the attention's dtype where it differs: "bf16", "bf16-attn-fp16". Two variants of
        one size are two entries with their own graphs (the rtx5090 and the h100 builds of one folder)."""
        return self.precision + (f"-attn-{self.attention_dtype}" if self.attention_dtype else "")

    @property
    def key(self) -> str:
        return f"{self.backend}:{self.target or '-'}:{self.bucket[0]}x{self.bucket[1]}:b{self.batch}:{self.variant}"


MAX_SIDE = 65536
MAX_TENSOR_ELEMENTS = 1 << 32
# The schema every manifest is typed against before an Entry is built (pydantic, strict: "1" is not 1, 1.0 is not
# 1, true is not 1; no field the SDK does not write). Why pydantic: the server's query models are pydantic already
# (FastAPI), one library types both, and its errors name the field and the value that broke it.
STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)
Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]
RelPath = Annotated[str, StringConstraints(min_length=1, max_length=512)]
Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Release = Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+){1,3}([+.][0-9A-Za-z.]+)?$", max_length=64)]
Dim = Annotated[int, Field(ge=1, le=MAX_SIDE * 64)]
Graph = Literal["text", "adapter", "denoiser"]
PRECISIONS = ("fp32", "bf16", "fp16", "fp8", "fp8-fp32")
TENSOR_DTYPES = ("float", "float16", "bfloat16", "float8e4m3fn", "int64", "int32", "bool")


class TensorSchema(BaseModel):
    model_config = STRICT
    name: Name
    shape: Annotated[list[Dim], Field(min_length=1, max_length=8)]
    dtype: Literal[TENSOR_DTYPES]

    @model_validator(mode="after")
    def _bounded(self) -> "TensorSchema":
        if math.prod(self.shape) > MAX_TENSOR_ELEMENTS:
            raise ValueError(f"{self.name} has {math.prod(self.shape):,} elements (at most {MAX_TENSOR_ELEMENTS:,})")
        return self


class GraphIOSchema(BaseModel):
    model_config = STRICT
    inputs: Annotated[list[TensorSchema], Field(min_length=1, max_length=16)]
    outputs: Annotated[list[TensorSchema], Field(min_length=1, max_length=16)]


class EntrySchema(BaseModel):
    model_config = STRICT
    backend: Literal[ENTRY_BACKENDS]
    bucket: Annotated[list[Annotated[int, Field(ge=1, le=MAX_SIDE)]], Field(min_length=2, max_length=2)]
    batch: Annotated[int, Field(ge=1, le=1024)]
    precision: Literal[PRECISIONS]
    files: dict[Graph, RelPath]
    sha256: Annotated[dict[RelPath, Hex64], Field(max_length=64)]
    io: dict[Graph, GraphIOSchema]
    target: Name | None = None
    sm: Annotated[list[Annotated[int, Field(ge=0, le=1000)]], Field(max_length=8)] = []
    trt_version: Release | None = None
    hardware_compatibility: Literal["none", "ampere_plus", "same_compute_capability"] = "none"
    stripped: bool = False
    version_compatible: bool = False
    source: Name | None = None
    attention_dtype: Literal["fp16", "fp8", "fp8-mha"] | None = None
    torch_version: Release | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "EntrySchema":
        from pid_sdk.runtime.selection import TARGETS

        if set(self.files) != set(GRAPHS) or set(self.io) != set(GRAPHS):
            raise ValueError(f"files and io must name each of {GRAPHS}")
        targets = {"onnx": (None,), "aoti": ("cpu", "cuda")}.get(self.backend) or \
            tuple(t for t, (b, _) in TARGETS.items() if b == self.backend)
        if self.target not in targets:
            raise ValueError(f"a {self.backend} entry's target is one of {targets}, not {self.target!r}")
        if self.backend == "aoti" and self.torch_version is None:
            raise ValueError("an aoti entry records the torch release that compiled it")
        if self.backend in ("tensorrt", "tensorrt_rtx") and (self.trt_version is None or not self.sm):
            raise ValueError("a plan entry records its library version and compute capabilities")
        return self


class ManifestSchema(BaseModel):
    model_config = STRICT
    format: Literal[FORMAT]
    format_version: Literal[VERSION]
    preset: Name
    config: dict
    model_sha256: Hex64 | None
    weights: RelPath | None
    entries: Annotated[list[EntrySchema], Field(max_length=4096)]
    license: Annotated[str, StringConstraints(max_length=512)] | None = None
    manifest_sha256: Hex64 | None = None


@dataclass
class Manifest:
    config: PiDConfig
    model_sha256: str
    entries: list[Entry]
    weights: str | None = None  # relative path of the shared weights file
    license: str | None = None  # the weights' licence (pid_sdk/registry.py), None where unknown

    def to_dict(self) -> dict:
        data = {"format": FORMAT, "format_version": VERSION, "preset": self.config.name,
                "config": self.config.to_dict(), "model_sha256": self.model_sha256, "weights": self.weights,
                "entries": [e.to_dict() for e in self.entries]}
        return data if self.license is None else {**data, "license": self.license}

    def add(self, entry: Entry) -> None:
        self.entries = [e for e in self.entries if e.key != entry.key] + [entry]


def is_engine_dir(path: str | Path) -> bool:
    """Whether `path` is a folder whose regular manifest.json says it holds engines (or says so, damaged: the
    error then says re-export). A manifest that is a FIFO, a device or a link out of the folder is not opened."""
    try:
        with open_in_folder(path, MANIFEST, what="engine manifest", max_bytes=MAX_JSON_BYTES) as f:
            return f'"{FORMAT}"'.encode() in f.read(4096)
    except (CheckpointError, OSError):
        return False


def read_engine_manifest(folder: str | Path, *, verify: bool = True) -> Manifest:
    """The folder's manifest: a regular file inside the folder, read within bounds, typed against its schema,
    checked against its digest (`verify=False`: the explicit opt-out), and every path it names confined to the
    folder before anything is opened."""
    path = Path(folder) / MANIFEST
    fix = "re-export the engine set (pid-sdk export)"
    if not os.path.lexists(path):
        raise CheckpointError(f"{folder} has no engine manifest ({MANIFEST}).",
                              fix="export graphs into it with `pid-sdk export` first")
    with open_in_folder(folder, MANIFEST, what="engine manifest", max_bytes=MAX_JSON_BYTES) as f:
        data = read_json(f, what=f"engine manifest {path}", fix=fix)
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("format_version") != VERSION:
        got = (f"format={data.get('format')} version={data.get('format_version')}" if isinstance(data, dict)
               else type(data).__name__)
        raise CheckpointError(f"{path} is not a pid-sdk engine manifest of a supported version.",
                              received=str(got)[:200], expected=f"format={FORMAT} version={VERSION}", fix=fix)
    try:
        schema = ManifestSchema.model_validate(data)
    except ValidationError as exc:
        raise CheckpointError(f"{path} is damaged: {_first_error(exc)}.", received=f"{exc.error_count()} problems",
                              expected="a manifest written by pid-sdk export / build", fix=fix) from None
    check_digest(data, path, verify, fix)
    manifest = Manifest(PiDConfig.from_dict(schema.config), schema.model_sha256,
                        [Entry.from_dict(e) for e in data["entries"]], schema.weights, schema.license)
    for rel in manifest_paths(manifest):
        inside(folder, rel)
    return manifest


def _first_error(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ".".join(map(str, error["loc"])) or "the top level"
    return f"{where}: {error['msg']}"[:200]


def manifest_paths(manifest: Manifest) -> list[str]:
    """Every file path a manifest names: the shared weights, and each entry's graphs and hashed files."""
    paths = [manifest.weights] if manifest.weights is not None else []
    for e in manifest.entries:
        paths += list(e.files.values()) + list(e.sha256)
    return paths


def write_manifest(folder: str | Path, manifest: Manifest) -> None:
    """manifest.json with its digest, written through a temporary file and renamed into place."""
    folder = Path(folder)
    data = manifest.to_dict()
    data["manifest_sha256"] = digest(data)
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=folder)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
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
    """`folder / rel` after checking it stays inside, exists, is a regular file and (unless `want` is None)
    matches its sha256."""
    path = inside(folder, rel)
    if not os.path.lexists(path):
        raise CheckpointError(f"{what} is missing.", received=str(path),
                              fix="rebuild it (pid-sdk export / pid-sdk build)")
    with open_in_folder(folder, rel, what=what) as f:  # a FIFO, device or folder is refused, not read
        got = sha256_of(f) if want is not None else None
    if got != want:
        raise CheckpointError(f"{what} does not match the manifest's sha256 (modified, truncated or replaced).",
                              received=got, expected=want, fix="rebuild it (pid-sdk export / pid-sdk build)")
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
