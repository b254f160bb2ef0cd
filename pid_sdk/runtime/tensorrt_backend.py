"""TensorRT / TensorRT-RTX backend: check each plan (header, then the library's own validity check), refit stripped
plans from the ONNX weights, one device-memory arena for the three engines, static I/O buffers bound once, the
denoiser captured once per entry as a CUDA graph and replayed by every later step of every decode.

Written against the documented Python API of both libraries; running it needs a GPU of the plan's family. What
does not need one (header checks, buffer specs, arena sizing, the capture policy) is tested on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from pid_sdk.errors import CheckpointError, ConfigError
from pid_sdk.runtime.manifest import Entry, check_static_inputs, inside
from pid_sdk.runtime.selection import version_runs

MAGICS = {b"ftrt": "tensorrt", b"vtrt": "tensorrt_rtx"}
VERSION_OFFSET = 24  # major, minor, patch bytes (seen in TensorRT-RTX 1.7 plans)
TORCH_DTYPES = {"float": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Conditioning tensors: written by the text / adapter engines straight into the denoiser's input buffers.
SHARED = ("text_tokens", "latent_tokens", "gate_offsets")


def plan_header(data: bytes) -> tuple[str, tuple[int, int, int]] | None:
    """(library, version) from a serialized plan's header, or None for an unknown layout. Used to name what a plan
    is and, without a GPU, to judge it; on a GPU the library's validity check has the last word."""
    lib = MAGICS.get(data[:4])
    if lib is None or len(data) < VERSION_OFFSET + 3:
        return None
    return lib, tuple(data[VERSION_OFFSET:VERSION_OFFSET + 3])


def check_plan(data: bytes, path: Path, entry: Entry, installed: str) -> None:
    """Refuse a plan of another library, or of a version the installed one cannot run, before TensorRT sees it.
    The version rule is selection's (`version_runs`), so selection and this check never disagree."""
    header = plan_header(data)
    if header is None:
        raise CheckpointError(f"{path.name} is not a TensorRT plan (unknown header).", received=data[:4],
                              expected="a plan written by pid-sdk build", fix="rebuild this engine")
    lib, version = header
    built = ".".join(map(str, version))
    if lib != entry.backend or not version_runs(built, installed, entry.version_compatible):
        rule = "the same or a later" if entry.version_compatible else "exactly the same"
        raise CheckpointError(f"{path.name} was built by {lib} {built}.",
                              received=f"installed {entry.backend} {installed}",
                              expected=f"{entry.backend} of {rule} version as {built}",
                              fix="rebuild the engine with the installed version (pid-sdk build)")


def plan_diagnostics(trt, runtime, data: bytes) -> list[str]:
    """The library's verdict on a plan from its header alone (`get_engine_validity` over `engine_header_size`
    bytes): the names of what makes it invalid, or [] when valid. Without a GPU the library cannot judge
    anything but a malformed header; libraries without the call answer []."""
    check = getattr(runtime, "get_engine_validity", None)
    if check is None:
        return []
    validity, diagnostics = check(data[:getattr(runtime, "engine_header_size", len(data))])
    if validity != trt.EngineValidity.INVALID:
        return []
    names = [n for n, v in trt.EngineInvalidityDiagnostics.__members__.items() if int(diagnostics) & int(v)]
    return names or ["INVALID"]


def io_spec(entry: Entry) -> dict[str, dict]:
    """Every I/O tensor of the entry's three graphs by name -> shape and dtype, checked to agree where a name is
    shared (the conditioning the denoiser reads is the one the text and adapter engines write)."""
    spec: dict[str, dict] = {}
    for graph in ("text", "adapter", "denoiser"):
        for t in entry.io[graph]["inputs"] + entry.io[graph]["outputs"]:
            seen = spec.setdefault(t["name"], {"shape": list(t["shape"]), "dtype": t["dtype"]})
            if seen != {"shape": list(t["shape"]), "dtype": t["dtype"]}:
                raise CheckpointError(f"The graphs of {entry.key} disagree on {t['name']}.",
                                      received=f"{t['shape']} {t['dtype']}",
                                      expected=f"{seen['shape']} {seen['dtype']}",
                                      fix="re-export the entry (pid-sdk export)")
    return spec


def check_engine_io(engine, graph: str, entry: Entry) -> None:
    """The deserialised engine's I/O tensors are exactly the manifest's, with the same shapes: nothing unbound."""
    have = {engine.get_tensor_name(i): list(engine.get_tensor_shape(engine.get_tensor_name(i)))
            for i in range(engine.num_io_tensors)}
    want = {t["name"]: list(t["shape"]) for t in entry.io[graph]["inputs"] + entry.io[graph]["outputs"]}
    if have != want:
        raise CheckpointError(f"The {graph} engine of {entry.key} does not have the manifest's inputs and outputs.",
                              received=have, expected=want, fix="rebuild the engine (pid-sdk build)")


class DeviceArena:
    """One block of device memory for every engine of a decoder (they run one at a time on one stream): it grows
    to the largest engine's need and re-points every registered execution context when it does."""

    def __init__(self, device: str = "cuda"):
        self.device = device
        self.buffer: Tensor | None = None
        self.contexts: list = []

    def attach(self, context, size: int) -> None:
        self.contexts.append(context)
        if self.buffer is None or self.buffer.numel() < size:
            self.buffer = torch.empty(size, dtype=torch.uint8, device=self.device)
            for ctx in self.contexts:
                ctx.set_device_memory(self.buffer.data_ptr(), self.buffer.numel())
        else:
            context.set_device_memory(self.buffer.data_ptr(), self.buffer.numel())


class CapturePolicy:
    """The denoiser's first step runs eagerly (TensorRT initialises lazily, which a capture must not record) and
    its output is used; then, when the context is stream-capturable, one capture serves every later step of every
    decode of this entry (the I/O buffers are static); otherwise every step runs eagerly, with the reason kept."""

    def __init__(self, run: Callable[[], None], capturable: Callable[[], tuple[bool, str]],
                 capture: Callable[[], Callable[[], None]]):
        self.run, self.capturable, self.capture = run, capturable, capture
        self.replay: Callable[[], None] | None = None
        self.eager_runs, self.reason = 0, ""

    def __call__(self) -> None:
        if self.replay is not None:
            self.replay()
            return
        self.run()
        self.eager_runs += 1
        if self.eager_runs == 1:
            ok, self.reason = self.capturable()
            if ok:
                self.replay = self.capture()


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, folder: str | Path, entry: Entry, source: Entry | None, arena: DeviceArena | None = None):
        if not torch.cuda.is_available():
            raise ConfigError("TensorRT engines need a CUDA GPU.", fix="use backend='onnxruntime' or 'pytorch'")
        self.trt = __import__("tensorrt_rtx" if entry.backend == "tensorrt_rtx" else "tensorrt")
        self.entry, self.folder = entry, Path(folder)
        self.logger = self.trt.Logger(self.trt.Logger.ERROR)
        runtime = self.trt.Runtime(self.logger)
        if entry.version_compatible:  # the plan carries its lean runtime: TensorRT runs it only when allowed
            runtime.engine_host_code_allowed = True
        self.engines = {g: self._load(runtime, g, source) for g in ("text", "adapter", "denoiser")}
        self.stream = torch.cuda.Stream()
        self.tensors = {name: torch.empty(t["shape"], dtype=TORCH_DTYPES.get(t["dtype"], torch.float32), device="cuda")
                        for name, t in io_spec(entry).items()}
        self.arena = arena or DeviceArena()
        self.contexts = {}
        for g, engine in self.engines.items():
            check_engine_io(engine, g, entry)
            ctx = engine.create_execution_context(self.trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            self.arena.attach(ctx, engine.device_memory_size_v2)
            for i in range(engine.num_io_tensors):  # static buffers: bound once for the life of the backend
                name = engine.get_tensor_name(i)
                ctx.set_tensor_address(name, self.tensors[name].data_ptr())
            self.contexts[g] = ctx
        self.denoise = CapturePolicy(lambda: self._run("denoiser"), self._capturable, self._capture)

    def _load(self, runtime, graph: str, source: Entry | None):
        path = inside(self.folder, self.entry.files[graph])
        data = path.read_bytes()
        check_plan(data, path, self.entry, self.trt.__version__)
        problems = plan_diagnostics(self.trt, runtime, data)
        if problems:
            raise CheckpointError(f"{self.trt.__name__} says {path.name} cannot run on this GPU.",
                                  received=", ".join(problems), expected="a plan valid for this GPU and library",
                                  fix="rebuild the engine here (pid-sdk build --target ...)")
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise CheckpointError(f"TensorRT could not deserialise {path.name}.", fix="rebuild it (pid-sdk build)")
        if self.entry.stripped:
            self._refit(engine, graph, source)
        return engine

    def _refit(self, engine, graph: str, source: Entry | None) -> None:
        if source is None:
            raise CheckpointError("A weight-stripped plan needs its ONNX graph set for the weights.",
                                  received=self.entry.source, fix="keep the onnx/ folder beside the plans")
        refitter = self.trt.Refitter(engine, self.logger)
        parser = self.trt.OnnxParserRefitter(refitter, self.logger)
        onnx_path = inside(self.folder, source.files[graph])
        if not parser.refit_from_file(str(onnx_path)) or not refitter.refit_cuda_engine():
            raise CheckpointError(f"Refitting {graph} from {source.files[graph]} failed.", fix="rebuild the engine")

    def _run(self, graph: str) -> None:
        self.contexts[graph].execute_async_v3(self.stream.cuda_stream)

    def _capturable(self) -> tuple[bool, str]:
        check = getattr(self.contexts["denoiser"], "is_stream_capturable", None)  # TensorRT-RTX 1.2+
        if check is not None and not check(self.stream.cuda_stream):
            return False, "the execution context is not stream-capturable (plan built without REQUIRE_USER_ALLOCATION?)"
        return True, ""

    def _capture(self) -> Callable[[], None]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            self._run("denoiser")
        return graph.replay

    @property
    def ran(self) -> dict:
        return {"backend": self.entry.backend, "provider": torch.cuda.get_device_name(),
                "precision": self.entry.precision, "files": sorted(self.entry.files.values())}

    def prepare(self, *, text: Tensor, latent: Tensor, latent_sigma: Tensor, height: int, width: int):
        check_static_inputs(self.entry, text, latent)  # an InputError, not a failed reshape into the buffers
        self.stream.wait_stream(torch.cuda.current_stream())  # the inputs may still be being written there
        with torch.cuda.stream(self.stream):
            for name, value in (("text", text), ("latent", latent), ("latent_sigma", latent_sigma)):
                self.tensors[name].copy_(value.reshape(self.tensors[name].shape), non_blocking=True)
            self._run("text")
            self._run("adapter")
        return TensorRTStep(self)


class TensorRTStep:
    """The denoiser for one decode: the conditioning already sits in the backend's static buffers."""

    def __init__(self, backend: TensorRTBackend):
        self.backend = backend

    def infer(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        b, current = self.backend, torch.cuda.current_stream()
        b.stream.wait_stream(current)
        with torch.cuda.stream(b.stream):
            b.tensors["x"].copy_(feeds["x"], non_blocking=True)
            b.tensors["sigma"].fill_(float(feeds["sigma"]))  # a kernel argument: no host-to-device copy, no sync
            b.denoise()
            v = b.tensors["v"].clone()
        current.wait_stream(b.stream)
        v.record_stream(current)
        return {"v": v}
