"""`pid-sdk build`: TensorRT / TensorRT-RTX engines from an engine folder's ONNX graph sets.

One code path for both libraries where their APIs agree (network from ONNX, strongly typed, flags, timing cache);
they differ only in how the target GPU is named: TensorRT-RTX takes compute capabilities and builds without a GPU,
TensorRT builds for the GPU it runs on, optionally with a hardware-compatibility level.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from export.onnx_export import ATTENTION_COMPUTE
from pid_sdk.checkpoints import sha256_file, usual_permissions
from pid_sdk.errors import ConfigError, PiDError
from pid_sdk.interrupts import call_interruptibly
from pid_sdk.runtime.manifest import Entry, read_engine_manifest, verify_files, write_manifest
from pid_sdk.runtime.selection import TARGETS, covers
from pid_sdk.runtime.tensorrt_backend import plan_header

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
    expected = 'JSON with "targets" {name: {precisions, attention_dtype?}} and "presets" {name: {buckets}}'
    try:
        matrix = json.loads(Path(path).read_text())
        targets, presets = matrix["targets"], matrix.get("presets", {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"Cannot read the build matrix {path}.", received=f"{type(exc).__name__}: {exc}"[:200],
                          expected=expected, fix="start from engines/matrix.json") from None
    if not isinstance(targets, dict) or not isinstance(presets, dict):
        raise ConfigError(f"The build matrix {path} is malformed.", received=f"targets {type(targets).__name__}, "
                          f"presets {type(presets).__name__}", expected=expected, fix="start from engines/matrix.json")
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        raise ConfigError(f"The build matrix {path} names unknown targets.", received=unknown,
                          expected=sorted(TARGETS), fix="use the target names above")
    return matrix


def build_engines(folder: str | Path, target: str, *, sizes: list[tuple[int, int]] | None = None,
                  batch: int | None = None, precisions: list[str] | None = None, attention_dtype: str | None = None,
                  options: BuildOptions = BuildOptions(), log=print) -> list[Entry]:
    """Build one plan per graph for every matching ONNX entry of the folder and record them in its manifest.
    `attention_dtype`: only graph sets exported with it ("native": without --attention-dtype); None: any."""
    trt, backend, sms = prepare_target(target, options)
    folder = Path(folder)
    manifest = read_engine_manifest(folder)
    sources = [e for e in manifest.entries if e.backend == "onnx" and (not sizes or e.bucket in sizes)
               and (batch is None or e.batch == batch) and (not precisions or e.precision in precisions)
               and (attention_dtype is None or (e.attention_dtype or "native") == attention_dtype)]
    if not sources:
        raise ConfigError(f"No ONNX graph set in {folder} matches.",
                          received=f"sizes {sizes}, batch {batch}, precisions {precisions}, "
                                   f"attention {attention_dtype}",
                          expected=[e.key for e in manifest.entries], fix="pid-sdk export the sizes first")
    if backend == "tensorrt_rtx" and options.timing_cache:
        log("note: --timing-cache does not apply to TensorRT-RTX (its timing cache is a no-op; kernels are "
            "compiled at first run and kept in a runtime cache): no cache file written")
    refusals = {src.key: why for src in sources if (why := _unbuildable(backend, src, folder))}
    if len(refusals) == len(sources):
        raise next(iter(refusals.values()))
    for why in refusals.values():  # build what can be built; say what cannot, and the command that fixes it
        log(f"skipped: {why.what} fix: {why.fix}")
    built = []
    for src in (s for s in sources if s.key not in refusals):
        entry = _build_entry(trt, backend, target, sms, folder, src, options, log)
        manifest.add(entry)
        write_manifest(folder, manifest)
        built.append(entry)
    return built


def prepare_target(target: str, options: BuildOptions):
    """(library, backend, compute capabilities to build for) when this machine can build `target` with `options`;
    the PiDError saying why not otherwise."""
    if target not in TARGETS:
        raise ConfigError("Unknown build target.", received=target, expected=", ".join(TARGETS),
                          fix="pass --target rtx5090 (or another of the names above)")
    backend, target_sms = TARGETS[target]
    check_options(backend, target, options)
    trt = import_library(backend)
    sms = target_sms if backend == "tensorrt_rtx" else (built_sm(target, target_sms, options),)
    return trt, backend, sms


@dataclass
class MatrixResult:
    built: list[Entry]
    elsewhere: list[str]  # targets this machine cannot build, each with its reason
    unexported: list[str]  # (target, size, precision) that could be built here but have no ONNX graph set


def matrix_sizes(matrix: dict, manifest) -> list[tuple[int, int]]:
    """The matrix's buckets for the folder's preset; for a model it does not list (the demo, a fine-tune), the
    sizes exported into the folder."""
    from pid_sdk.buckets import Bucket

    listed = matrix.get("presets", {}).get(manifest.config.name, {}).get("buckets")
    if listed:
        return [(b.height, b.width) for b in map(Bucket.parse, listed)]
    return sorted({e.bucket for e in manifest.entries if e.backend == "onnx"})


def matrix_variants(matrix: dict) -> list[tuple[str, str | None]]:
    """Every (graph precision, attention dtype) the matrix's targets build from: what `pid-sdk export --matrix`
    exports (None: attention in the graph's precision)."""
    wanted = {(p, spec.get("attention_dtype")) for spec in matrix["targets"].values() for p in spec["precisions"]}
    return sorted(wanted, key=lambda v: (v[0], v[1] or ""))


def build_matrix(folder: str | Path, matrix: dict, *, options: BuildOptions = BuildOptions(),
                 log=print) -> MatrixResult:
    """Every target of the matrix that this machine can build, with the matrix's precisions, attention dtype and
    sizes (`matrix_sizes`); the targets that need another host are reported, not failed."""
    from pid_sdk.runtime.open_folder import skip_reason

    folder = Path(folder)
    manifest = read_engine_manifest(folder)
    sizes = matrix_sizes(matrix, manifest)
    if not sizes:
        raise ConfigError(f"{folder} has no ONNX graph sets, and the build matrix lists no sizes for "
                          f"{manifest.config.name}.", fix=f"pid-sdk export {folder} --matrix MATRIX --size HxW")
    result = MatrixResult([], [], [])
    for target, spec in matrix["targets"].items():
        try:
            prepare_target(target, options)
        except PiDError as exc:
            result.elsewhere.append(f"{target}: {skip_reason(exc)}")
            continue
        attention = spec.get("attention_dtype", "native")
        have = {(e.bucket, e.precision) for e in manifest.entries
                if e.backend == "onnx" and (e.attention_dtype or "native") == attention}
        for size in sizes:
            for precision in spec["precisions"]:
                if (size, precision) not in have:
                    result.unexported.append(f"{target}: pid-sdk export {folder} --size {size[0]}x{size[1]} "
                                             f"--precision {precision}"
                                             + (f" --attention-dtype {attention}" if attention != "native" else ""))
        todo = [s for s in sizes if any((s, p) in have for p in spec["precisions"])]
        if todo:
            result.built += build_engines(folder, target, sizes=todo, batch=matrix.get("batch"),
                                          precisions=spec["precisions"], attention_dtype=attention, options=options,
                                          log=log)
    return result


def check_options(backend: str, target: str, options: BuildOptions) -> None:
    """Refuse, before anything is built, the options the target's library cannot honour."""
    if backend != "tensorrt_rtx":
        return
    if options.version_compatible:
        raise ConfigError(f"TensorRT-RTX cannot build version-compatible plans ({target}).",
                          received="--version-compatible", expected="plans tied to the TensorRT-RTX version that "
                          "builds them (it ships no lean runtime: libnvinfer_lean)",
                          fix="drop --version-compatible, and rebuild the RTX engines with each TensorRT-RTX upgrade")
    if options.hardware_compatibility != "none":
        raise ConfigError(f"--hardware-compat applies to full TensorRT only, not to TensorRT-RTX ({target}).",
                          received=options.hardware_compatibility,
                          expected="TensorRT-RTX plans run on the compute capabilities they are built for",
                          fix="drop --hardware-compat; pass one --target per RTX GPU family (rtx5090, rtx4090)")


def built_sm(target: str, target_sms: tuple[int, ...], options: BuildOptions) -> int:
    """Full TensorRT builds for the GPU it runs on: that GPU's compute capability, refused unless the plan (at
    its hardware-compatibility level) covers the target's."""
    if not torch.cuda.is_available():
        raise ConfigError(f"Full TensorRT builds a {target} plan on a GPU, and this machine has none.",
                          received="no CUDA GPU", expected=f"a GPU of sm {list(target_sms)}",
                          fix=f"run pid-sdk build --target {target} on a {target} host (TensorRT-RTX targets build "
                              "on any machine: --target rtx5090)")
    major, minor = torch.cuda.get_device_capability()
    sm = 10 * major + minor
    if not all(covers("tensorrt", (sm,), options.hardware_compatibility, t) for t in target_sms):
        raise ConfigError(f"A TensorRT build on this sm {sm} GPU cannot produce a plan for {target} "
                          f"(sm {list(target_sms)}).", received=f"sm {sm}, hardware compatibility "
                          f"{options.hardware_compatibility}", expected=f"a build on sm {list(target_sms)}",
                          fix=f"build on a {target} host, or pass --hardware-compat ampere_plus (slower plans)")
    return sm


def _unbuildable(backend: str, src: Entry, folder: Path) -> BuildError | None:
    """Why the target's library cannot build this graph set (with the export that makes one it can), or None."""
    attention = src.attention_dtype
    fp16_attention = attention in ATTENTION_COMPUTE or (attention is None and src.precision == "fp16")
    if backend != "tensorrt_rtx" or fp16_attention:
        return None
    # TensorRT-RTX 1.7 crashes the process (SIGSEGV) building fp32 / bf16 attention: refused before it can.
    h, w = src.bucket
    return BuildError(f"{src.key} computes attention in {attention or src.precision}; TensorRT-RTX builds its fused "
                      "attention from fp16 inputs.", received=attention or src.precision, expected="fp16 attention",
                      fix=f"pid-sdk export {folder} --size {h}x{w} --batch {src.batch} --precision {src.precision} "
                          "--attention-dtype fp16")


def _build_entry(trt, backend, target, sms, folder: Path, src: Entry, options: BuildOptions, log) -> Entry:
    verify_files(folder, src)  # a graph replaced by one of another model or preset fails its sha256 here
    rel_dir = Path(target) / Path(src.files["denoiser"]).parent.name
    (folder / rel_dir).mkdir(parents=True, exist_ok=True)
    staged = {}
    try:  # every plan is built and checked under a temporary name; the old ones stay until all three are good
        for graph, onnx_rel in src.files.items():
            rel = rel_dir / f"{graph}.plan"
            t0 = time.perf_counter()
            plan = build_plan(trt, backend, folder / onnx_rel, sms, options)
            tmp = folder / rel.with_name(f".{graph}.plan.tmp")
            tmp.write_bytes(plan)
            usual_permissions(tmp)
            _check_built(tmp, backend, trt.__version__)
            staged[graph] = (tmp, rel)
            log(f"built {rel} in {time.perf_counter() - t0:.1f}s ({len(plan) / 2**20:.1f} MiB)")
    except BaseException:
        for tmp, _ in staged.values():
            tmp.unlink(missing_ok=True)
        raise
    files, hashes = {}, {}
    for graph, (tmp, rel) in staged.items():
        os.replace(tmp, folder / rel)
        files[graph], hashes[str(rel)] = str(rel), sha256_file(folder / rel)
    return Entry(backend, src.bucket, src.batch, src.precision, files, hashes, src.io, target=target, sm=tuple(sms),
                 trt_version=trt.__version__, hardware_compatibility=options.hardware_compatibility,
                 stripped=options.strip, version_compatible=options.version_compatible, source=src.key,
                 attention_dtype=src.attention_dtype)


def _check_built(path: Path, backend: str, version: str) -> None:
    """What was written is a whole plan of this library and version (the header pid-sdk checks at load)."""
    header = plan_header(path.read_bytes()[:64])
    want = tuple(int(v) for v in version.split(".")[:3])
    if header != (backend, want):
        raise BuildError(f"The plan written to {path.name} does not read back as a {backend} {version} plan.",
                         received=header, expected=(backend, want), fix="check the disk, then rebuild")


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
    cache = _timing_cache(config, options.timing_cache) if backend == "tensorrt" else None
    monitor = _stoppable_monitor(trt)
    config.progress_monitor = monitor
    try:
        plan = call_interruptibly(lambda: builder.build_serialized_network(network, config), monitor.stop,
                                  name=f"{backend}-build")
    except KeyboardInterrupt:
        del builder, network, parser, config, monitor  # freed now: a kept traceback would free them at exit
        raise
    if plan is None:
        raise BuildError(f"{backend} failed to build {onnx_path.name}.", received=logger.last_error or "no message",
                         fix=_build_hint(backend, options))
    if cache is not None and options.timing_cache:
        options.timing_cache.write_bytes(bytes(cache.serialize()))
    return bytes(plan)


def _stoppable_monitor(trt):
    """A progress monitor whose next step answers "stop" once `stop()` is called: how a build is cancelled (the
    library then returns no plan)."""

    class Stoppable(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.stopped = False

        def phase_start(self, phase_name, parent_phase, num_steps):
            pass

        def step_complete(self, phase_name, step):
            return not self.stopped

        def phase_finish(self, phase_name):
            pass

        def stop(self) -> None:
            self.stopped = True

    return Stoppable()


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
    user_allocation = getattr(trt.BuilderFlag, "REQUIRE_USER_ALLOCATION", None)
    if trt.__name__ == "tensorrt_rtx" and user_allocation is not None:
        config.set_flag(user_allocation)  # TensorRT-RTX: needed for the runtime's CUDA-graph capture
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
