"""`pid-sdk build`: TensorRT / TensorRT-RTX engines from an engine folder's ONNX graph sets.

One code path for both libraries where their APIs agree (network from ONNX, strongly typed, flags, timing cache);
they differ only in how the target GPU is named: TensorRT-RTX takes compute capabilities and builds without a GPU,
TensorRT builds for the GPU it runs on, optionally with a hardware-compatibility level.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from pid_sdk.checkpoints import sha256_file
from pid_sdk.errors import ConfigError, PiDError
from pid_sdk.runtime.manifest import Entry, read_manifest, verify_files, write_manifest
from pid_sdk.runtime.selection import TARGETS

MATRIX = Path(__file__).resolve().parents[1] / "engines" / "matrix.json"


class BuildError(PiDError):
    """TensorRT could not build an engine."""


@dataclass(frozen=True)
class BuildOptions:
    strip: bool = False  # weight-stripped plan, refitted at load from the ONNX graph's weights
    version_compatible: bool = False
    hardware_compatibility: str = "none"  # TensorRT only: none, ampere_plus, same_compute_capability
    optimization_level: int | None = None
    timing_cache: Path | None = None


def import_library(backend: str):
    name = "tensorrt_rtx" if backend == "tensorrt_rtx" else "tensorrt"
    try:
        return __import__(name)
    except ImportError:
        extra = "rtx" if backend == "tensorrt_rtx" else "tensorrt"
        raise ConfigError(f"Building {backend} engines needs the `{name}` package.", received="not installed",
                          fix=f"pip install 'pid-sdk[{extra}]' on the build host") from None


def load_matrix(path: Path = MATRIX) -> dict:
    matrix = json.loads(path.read_text())
    unknown = sorted(set(matrix["targets"]) - set(TARGETS))
    if unknown:
        raise ConfigError(f"The build matrix {path} names unknown targets.", received=unknown,
                          expected=sorted(TARGETS), fix="use the target names above")
    return matrix


def build_engines(folder: str | Path, target: str, *, sizes: list[tuple[int, int]] | None = None,
                  batch: int | None = None, precisions: list[str] | None = None,
                  options: BuildOptions = BuildOptions(), log=print) -> list[Entry]:
    """Build one plan per graph for every matching ONNX entry of the folder and record them in its manifest."""
    if target not in TARGETS:
        raise ConfigError("Unknown build target.", received=target, expected=", ".join(TARGETS))
    folder = Path(folder)
    backend, sms = TARGETS[target]
    trt = import_library(backend)
    manifest = read_manifest(folder)
    sources = [e for e in manifest.entries if e.backend == "onnx" and (not sizes or e.bucket in sizes)
               and (batch is None or e.batch == batch) and (not precisions or e.precision in precisions)]
    if not sources:
        raise ConfigError(f"No ONNX graph set in {folder} matches.", received=f"sizes {sizes}, batch {batch}",
                          expected=[e.key for e in manifest.entries], fix="pid-sdk export the sizes first")
    built = []
    for src in sources:
        entry = _build_entry(trt, backend, target, sms, folder, src, options, log)
        manifest.add(entry)
        write_manifest(folder, manifest)
        built.append(entry)
    return built


def _build_entry(trt, backend, target, sms, folder: Path, src: Entry, options: BuildOptions, log) -> Entry:
    verify_files(folder, src)  # a graph replaced by one of another model or preset fails its sha256 here
    if backend == "tensorrt_rtx" and (src.attention_dtype or src.precision) != "fp16":
        # TensorRT-RTX 1.7 crashes the process (SIGSEGV) building fp32 / bf16 attention: refuse before it can.
        raise BuildError(f"{src.key} computes attention in {src.attention_dtype or src.precision}; TensorRT-RTX "
                         "builds its fused attention from fp16 inputs.", received=src.attention_dtype or src.precision,
                         expected="fp16 attention", fix="re-export with --attention-dtype fp16")
    rel_dir = Path(target) / Path(src.files["denoiser"]).parent.name
    (folder / rel_dir).mkdir(parents=True, exist_ok=True)
    files, hashes = {}, {}
    for graph, onnx_rel in src.files.items():
        rel = rel_dir / f"{graph}.plan"
        t0 = time.perf_counter()
        plan = build_plan(trt, backend, folder / onnx_rel, sms, options)
        (folder / rel).write_bytes(plan)
        files[graph], hashes[str(rel)] = str(rel), sha256_file(folder / rel)
        log(f"built {rel} in {time.perf_counter() - t0:.1f}s ({len(plan) / 2**20:.1f} MiB)")
    return Entry(backend, src.bucket, src.batch, src.precision, files, hashes, src.io, target=target, sm=sms,
                 trt_version=trt.__version__, hardware_compatibility=options.hardware_compatibility,
                 stripped=options.strip, version_compatible=options.version_compatible, source=src.key,
                 attention_dtype=src.attention_dtype)


def build_plan(trt, backend: str, onnx_path: Path, sms: tuple[int, ...], options: BuildOptions) -> bytes:
    logger = _Logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_strongly_typed(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        raise BuildError(f"{backend} could not parse {onnx_path.name}.", received="; ".join(errors)[:500],
                         fix="re-export the graph with this pid-sdk version")
    config = builder.create_builder_config()
    _target(trt, backend, config, sms, options)
    _flags(trt, config, options)
    cache = _timing_cache(config, options.timing_cache)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError(f"{backend} failed to build {onnx_path.name}.", received=logger.last_error or "no message",
                         fix=_build_hint(backend, options))
    if cache is not None and options.timing_cache:
        options.timing_cache.write_bytes(bytes(cache.serialize()))
    return bytes(plan)


def _strongly_typed(trt) -> int:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)  # TensorRT 11 networks are always strongly typed


def _target(trt, backend: str, config, sms: tuple[int, ...], options: BuildOptions) -> None:
    if backend == "tensorrt_rtx":
        config.num_compute_capabilities = len(sms)
        for i, sm in enumerate(sms):
            config.set_compute_capability(getattr(trt.ComputeCapability, f"SM{sm}"), i)
        return
    levels = {"none": "NONE", "ampere_plus": "AMPERE_PLUS", "same_compute_capability": "SAME_COMPUTE_CAPABILITY"}
    level = levels[options.hardware_compatibility]
    config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, level)


def _flags(trt, config, options: BuildOptions) -> None:
    if options.strip:
        config.set_flag(trt.BuilderFlag.STRIP_PLAN)
        config.set_flag(trt.BuilderFlag.REFIT_IDENTICAL)
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if options.optimization_level is not None:
        config.builder_optimization_level = options.optimization_level


def _timing_cache(config, path: Path | None):
    data = path.read_bytes() if path and path.exists() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _build_hint(backend: str, options: BuildOptions) -> str:
    if backend == "tensorrt_rtx" and options.strip:
        return "TensorRT-RTX builds refittable / weight-stripped plans only with a GPU present: drop --strip here"
    return "rerun with PID_SDK_TRT_VERBOSE=1 for the builder log; export attention in fp16 (--attention-dtype fp16)"


class _Logger:
    """Keeps the last error for the PiDError; prints nothing unless PID_SDK_TRT_VERBOSE is set."""

    def __new__(cls, trt):
        import os

        class Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.last_error = ""

            def log(self, severity, msg):
                if severity <= trt.ILogger.Severity.ERROR:
                    self.last_error = msg
                if os.environ.get("PID_SDK_TRT_VERBOSE"):
                    print(f"[{backend_name}] {msg}")

        backend_name = trt.__name__
        return Logger()
