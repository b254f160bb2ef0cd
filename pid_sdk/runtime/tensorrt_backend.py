"""TensorRT / TensorRT-RTX backend: deserialise (after checking the plan header), refit stripped plans from the ONNX
weights, one device-memory arena for the three engines, the denoiser replayed as a CUDA graph, no host
synchronisation inside the step loop. Written against the documented Python API of both libraries; it needs a GPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from pid_sdk.errors import CheckpointError, ConfigError
from pid_sdk.runtime.manifest import Entry

MAGICS = {b"ftrt": "tensorrt", b"vtrt": "tensorrt_rtx"}
VERSION_OFFSET = 24  # major, minor, patch bytes (seen in TensorRT-RTX 1.7 plans)
TORCH_DTYPES = {"float": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def plan_header(data: bytes) -> tuple[str, tuple[int, int, int]] | None:
    """(library, version) from a serialized plan's header, or None for an unknown layout."""
    lib = MAGICS.get(data[:4])
    if lib is None or len(data) < VERSION_OFFSET + 3:
        return None
    return lib, tuple(data[VERSION_OFFSET:VERSION_OFFSET + 3])


def check_plan(data: bytes, path: Path, entry: Entry, installed: str) -> None:
    """Refuse a plan of another library or version before TensorRT sees it (it would fail with a raw log)."""
    header = plan_header(data)
    if header is None:
        raise CheckpointError(f"{path.name} is not a TensorRT plan (unknown header).", received=data[:4],
                              expected="a plan written by pid-sdk build", fix="rebuild this engine")
    lib, version = header
    have = tuple(int(v) for v in installed.split(".")[:3])
    same = version[:2] == have[:2] if entry.version_compatible else version == have
    if lib != entry.backend or not same:
        raise CheckpointError(f"{path.name} was built by {lib} {'.'.join(map(str, version))}.",
                              received=f"installed {entry.backend} {installed}",
                              expected=f"{entry.backend} {'.'.join(map(str, version))}",
                              fix="rebuild the engine with the installed version (pid-sdk build)")


class DeviceArena:
    """One block of device memory for every engine of a decoder (they run one at a time on one stream): it grows
    to the largest engine's need and re-points every registered execution context when it does."""

    def __init__(self):
        self.buffer: Tensor | None = None
        self.contexts: list = []

    def attach(self, context, size: int) -> None:
        self.contexts.append(context)
        if self.buffer is None or self.buffer.numel() < size:
            self.buffer = torch.empty(size, dtype=torch.uint8, device="cuda")
        for ctx in self.contexts:
            ctx.set_device_memory(self.buffer.data_ptr(), self.buffer.numel())


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, folder: str | Path, entry: Entry, source: Entry | None, arena: DeviceArena | None = None):
        if not torch.cuda.is_available():
            raise ConfigError("TensorRT engines need a CUDA GPU.", fix="use backend='onnxruntime' or 'pytorch'")
        self.trt = __import__("tensorrt_rtx" if entry.backend == "tensorrt_rtx" else "tensorrt")
        self.entry, self.folder = entry, Path(folder)
        self.logger = self.trt.Logger(self.trt.Logger.ERROR)
        runtime = self.trt.Runtime(self.logger)
        self.engines = {g: self._load(runtime, g, source) for g in entry.files}
        self.arena = arena or DeviceArena()
        self.contexts = {}
        for g, engine in self.engines.items():
            ctx = engine.create_execution_context(self.trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            self.arena.attach(ctx, engine.device_memory_size_v2)
            self.contexts[g] = ctx
        self.stream = torch.cuda.Stream()

    def _load(self, runtime, graph: str, source: Entry | None):
        path = self.folder / self.entry.files[graph]
        data = path.read_bytes()
        check_plan(data, path, self.entry, self.trt.__version__)
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
        if not parser.refit_from_file(str(self.folder / source.files[graph])) or not refitter.refit_cuda_engine():
            raise CheckpointError(f"Refitting {graph} from {source.files[graph]} failed.", fix="rebuild the engine")

    def _buffers(self, graph: str, kind: str) -> dict[str, Tensor]:
        return {t["name"]: torch.empty(t["shape"], dtype=TORCH_DTYPES.get(t["dtype"], torch.float32), device="cuda")
                for t in self.entry.io[graph][kind]}

    def _run(self, graph: str, tensors: dict[str, Tensor]) -> None:
        ctx = self.contexts[graph]
        for name, t in tensors.items():
            ctx.set_tensor_address(name, t.data_ptr())
        ctx.execute_async_v3(self.stream.cuda_stream)

    def prepare(self, *, text: Tensor, latent: Tensor, latent_sigma: Tensor, height: int, width: int):
        inputs = {"text": text, "latent": latent, "latent_sigma": latent_sigma}
        with torch.cuda.stream(self.stream):
            text_io = {**self._buffers("text", "inputs"), **self._buffers("text", "outputs")}
            adapter_io = {**self._buffers("adapter", "inputs"), **self._buffers("adapter", "outputs")}
            for io in (text_io, adapter_io):
                for name in io:
                    if name in inputs:
                        io[name].copy_(inputs[name], non_blocking=True)
            self._run("text", text_io)
            self._run("adapter", adapter_io)
        conditioning = {"text_tokens": text_io["text_tokens"], "latent_tokens": adapter_io["latent_tokens"],
                        "gate_offsets": adapter_io["gate_offsets"]}
        return TensorRTStep(self, conditioning)


class TensorRTStep:
    """The denoiser for one decode, captured as a CUDA graph at its first step and replayed after."""

    def __init__(self, backend: TensorRTBackend, conditioning: dict[str, Tensor]):
        self.backend = backend
        self.io = {**backend._buffers("denoiser", "inputs"), **backend._buffers("denoiser", "outputs"), **conditioning}
        self.graph: torch.cuda.CUDAGraph | None = None

    def infer(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        b = self.backend
        with torch.cuda.stream(b.stream):
            self.io["x"].copy_(feeds["x"], non_blocking=True)
            self.io["sigma"].fill_(float(feeds["sigma"]))  # a kernel argument: no host-to-device copy, no sync
            if self.graph is None:
                b._run("denoiser", self.io)  # first run outside capture: TensorRT's lazy initialisation
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph, stream=b.stream):
                    b._run("denoiser", self.io)
            self.graph.replay()
            v = self.io["v"].clone()
        torch.cuda.current_stream().wait_stream(b.stream)
        return {"v": v}
