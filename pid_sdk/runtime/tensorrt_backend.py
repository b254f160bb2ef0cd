"""TensorRT / TensorRT-RTX backend: check each plan (the library's own validity check; the header where the library
cannot judge), refit stripped plans from the ONNX weights, one device-memory arena for every engine, static I/O
buffers bound once, the denoiser captured once per entry as a CUDA graph and replayed by every later step of every
decode. Each decode keeps its own conditioning (a guided decode runs two, conditional and unconditional, in turn):
the static buffers hold the conditioning of the decode that runs, swapped in when another one takes its turn.

Written against the documented Python API of both libraries; running it needs a GPU of the plan's family. What
does not need one (header checks, buffer specs, arena sizing, the capture policy) is tested on the CPU.
"""

from __future__ import annotations

import weakref
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
    if lib != entry.backend or not version_runs(built, installed, entry.version_compatible, entry.backend):
        rule = "the same release or a later one it is documented to run on" if entry.version_compatible \
            else "exactly the same release"
        raise CheckpointError(f"{path.name} was built by {lib} {built}.",
                              received=f"installed {entry.backend} {installed}",
                              expected=f"{entry.backend} of {rule} as {built}",
                              fix="rebuild the engine with the installed version (pid-sdk build)")


def plan_diagnostics(trt, runtime, data: bytes) -> list[str] | None:
    """The library's verdict on a plan from its header alone (`get_engine_validity` over `engine_header_size`
    bytes): the names of what makes it invalid, or [] when valid; None where the library cannot judge it (no such
    call, or no GPU to judge against: it then answers INVALID without a reason), and `check_plan` judges the
    header instead. Without a GPU the library still recognises a malformed header."""
    check = getattr(runtime, "get_engine_validity", None)
    if check is None:
        return None
    validity, diagnostics = check(data[:getattr(runtime, "engine_header_size", len(data))])
    if validity != trt.EngineValidity.INVALID:
        return []
    names = [n for n, v in trt.EngineInvalidityDiagnostics.__members__.items() if int(diagnostics) & int(v)]
    return names or None


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
    to the largest engine's need and re-points every registered execution context when it does. A CUDA graph
    captured before it grew recorded the old address: `on_move` of every attachment is called when the block
    moves, so those graphs are dropped and captured again."""

    def __init__(self, device: str = "cuda"):
        self.device = device
        self.buffer: Tensor | None = None
        self.attached: list[tuple[object, Callable[[], None]]] = []

    def attach(self, context, size: int, on_move: Callable[[], None] = lambda: None) -> None:
        self.attached.append((context, on_move))
        if self.buffer is None or self.buffer.numel() < size:
            self.buffer = torch.empty(size, dtype=torch.uint8, device=self.device)
            for ctx, moved in self.attached:
                ctx.set_device_memory(self.buffer.data_ptr(), self.buffer.numel())
                moved()
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

    def reset(self) -> None:
        """Drop the capture (the memory it recorded moved): the next call runs eagerly and captures again."""
        self.replay, self.eager_runs = None, 0


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
        self.denoise = CapturePolicy(lambda: self._run("denoiser"), self._capturable, self._capture)
        self._owner = None  # a weak reference to the TensorRTStep whose conditioning sits in the static buffers
        for g, engine in self.engines.items():
            check_engine_io(engine, g, entry)
            ctx = engine.create_execution_context(self.trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            self.arena.attach(ctx, engine.device_memory_size_v2, self.denoise.reset)
            for i in range(engine.num_io_tensors):  # static buffers: bound once for the life of the backend
                name = engine.get_tensor_name(i)
                ctx.set_tensor_address(name, self.tensors[name].data_ptr())
            self.contexts[g] = ctx

    def _load(self, runtime, graph: str, source: Entry | None):
        path = inside(self.folder, self.entry.files[graph])
        data = path.read_bytes()
        problems = plan_diagnostics(self.trt, runtime, data)
        if problems is None:  # the library cannot judge the plan before deserialising: its header can
            check_plan(data, path, self.entry, self.trt.__version__)
        elif problems:
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
            self._evict()
            for name, value in (("text", text), ("latent", latent), ("latent_sigma", latent_sigma)):
                self.tensors[name].copy_(value.reshape(self.tensors[name].shape), non_blocking=True)
            self._run("text")
            self._run("adapter")
        step = TensorRTStep(self)
        self._owner = weakref.ref(step)
        return step

    def load(self, step: "TensorRTStep") -> None:
        """Put `step`'s conditioning in the static buffers the denoiser reads (on the backend's stream)."""
        if self._owner is not None and self._owner() is step:
            return
        self._evict()
        for name in SHARED:
            self.tensors[name].copy_(step.saved[name])
        self._owner = weakref.ref(step)

    def _evict(self) -> None:
        """The decode whose conditioning sits in the static buffers keeps a copy before they are overwritten; a
        decode that has finished (its step object gone) needs none."""
        owner = self._owner() if self._owner is not None else None
        if owner is not None:
            if owner.saved is None:
                owner.saved = {name: torch.empty_like(self.tensors[name]) for name in SHARED}
            for name in SHARED:
                owner.saved[name].copy_(self.tensors[name])
        self._owner = None


class TensorRTStep:
    """The denoiser for one decode: its conditioning sits in the backend's static buffers, or in `saved` while
    another decode's does."""

    def __init__(self, backend: TensorRTBackend):
        self.backend = backend
        self.saved: dict[str, Tensor] | None = None

    def infer(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        b, current = self.backend, torch.cuda.current_stream()
        b.stream.wait_stream(current)
        with torch.cuda.stream(b.stream):
            b.load(self)
            b.tensors["x"].copy_(feeds["x"], non_blocking=True)
            b.tensors["sigma"].fill_(float(feeds["sigma"]))  # a kernel argument: no host-to-device copy, no sync
            b.denoise()
            v = b.tensors["v"].clone()
        current.wait_stream(b.stream)
        v.record_stream(current)
        return {"v": v}
