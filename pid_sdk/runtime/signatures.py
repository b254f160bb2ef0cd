"""What a graph file says it is, read from the file itself: an entry's labels (role, bucket, I/O shapes, precision,
device) are claims the file must bear out before it is run or called good by `pid-sdk verify`.

ONNX graphs: the names, shapes and element types of their inputs and outputs, and the element type of their float
weights (initialisers; external data is not read). AOTInductor packages: the device they were compiled for (their
metadata), their input and output counts, the dtypes and dimensions their generated code checks each input
against, and the dtype of their constants (all read from the package's zip, nothing loaded or run).
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pid_sdk.errors import CheckpointError
from pid_sdk.runtime.manifest import GRAPHS, Entry

# Each graph's inputs and outputs, by role: the forward arguments they were exported from.
ROLE_IO = {"text": (("text",), ("text_tokens",)),
           "adapter": (("latent", "latent_sigma"), ("latent_tokens", "gate_offsets")),
           "denoiser": (("x", "sigma", "text_tokens", "latent_tokens", "gate_offsets"), ("v",))}
# The element type of a graph's float weights, by precision (ONNX DataType names, lowered); fp8 graphs also hold
# E4M3 constants (their Q/DQ zero points).
WEIGHT_DTYPES = {"fp32": "float", "fp8-fp32": "float", "bf16": "bfloat16", "fp8": "bfloat16", "fp16": "float16"}
AOTI_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
MAX_WRAPPER_BYTES = 64 << 20


@dataclass(frozen=True)
class Signature:
    inputs: tuple[tuple[str, tuple[int, ...], str], ...]  # name ("" where the file has none), shape, dtype
    outputs: int
    weights: frozenset[str]  # element types of the float weights / constants
    device: str | None = None  # AOTInductor: cpu or cuda
    casts: frozenset[str] = frozenset()  # ONNX: the element types its Cast nodes convert to


def onnx_signature(path: Path) -> Signature:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    names = onnx.TensorProto.DataType.Name

    def spec(value) -> tuple[str, tuple[int, ...], str]:
        t = value.type.tensor_type
        return value.name, tuple(d.dim_value for d in t.shape.dim), names(t.elem_type).lower()

    floats = {names(t.data_type).lower() for t in graph.initializer} & {"float", "bfloat16", "float16",
                                                                         "float8e4m3fn"}
    casts = {names(a.i).lower() for n in graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"}
    return Signature(tuple(spec(v) for v in graph.input), len(graph.output), frozenset(floats), casts=frozenset(casts))


def aoti_signature(path: Path) -> Signature:
    """Read from the package without loading it: its generated wrapper checks each input's dtype and dimensions."""
    try:
        with zipfile.ZipFile(path) as package:
            names = package.namelist()
            wrapper = next(n for n in names if n.endswith(".wrapper.cpp"))
            metadata = next(n for n in names if n.endswith(".wrapper_metadata.json"))
            if package.getinfo(wrapper).file_size > MAX_WRAPPER_BYTES:
                raise ValueError("a wrapper larger than any package has")
            code = package.read(wrapper).decode("utf-8", errors="replace")
            device = json.loads(package.read(metadata)).get("AOTI_DEVICE_KEY")
    except (zipfile.BadZipFile, StopIteration, ValueError, KeyError, OSError) as exc:
        raise CheckpointError(f"{path.name} is not an AOTInductor package.", received=f"{type(exc).__name__}",
                              expected="a .pt2 written by pid-sdk export --format aoti",
                              fix="re-export the entry (pid-sdk export --format aoti)") from None
    inputs = []
    for index in range(len(re.findall(r"inputs_info_\[\d+\]\.name", code))):
        body = code.split(f"static void check_input_{index}(", 1)[-1].split("AOTI_NOINLINE", 1)[0]
        dtype = re.search(r"_expected_dtype = aoti_torch_dtype_(\w+)\(\)", body)
        dims = tuple(int(d) for d, _ in re.findall(r"if \((\d+) != \w+_size\[(\d+)\]\)", body))
        inputs.append(("", dims, dtype.group(1) if dtype else ""))
    constants = frozenset(re.findall(r"constants_info_\[\d+\]\.dtype = cached_torch_dtype_(\w+);", code))
    return Signature(tuple(inputs), len(re.findall(r"outputs_info_\[\d+\]\.name", code)), constants, device)


def check_graph(folder: Path, entry: Entry, graph: str) -> None:
    """Refuse the file of `graph` unless it is what the entry says: that role's inputs and outputs with the entry's
    shapes, weights of the entry's precision, compiled for the entry's device. The mismatches are named."""
    path = Path(folder) / entry.files[graph]
    problems = (_aoti_problems if entry.backend == "aoti" else _onnx_problems)(path, entry, graph)
    if problems:
        raise CheckpointError(f"{entry.files[graph]} is not the {graph} graph {entry.key} says it is: "
                              f"{problems[0]}.", received="; ".join(problems)[:400],
                              expected=f"the {graph} graph of {entry.variant} at {entry.bucket[0]}x{entry.bucket[1]}, "
                                       f"batch {entry.batch}",
                              fix="rebuild the entry (pid-sdk export); never edit a manifest or move graphs by hand")


def _onnx_problems(path: Path, entry: Entry, graph: str) -> list[str]:
    sig = onnx_signature(path)
    names, outputs = ROLE_IO[graph]
    problems = []
    if tuple(n for n, _, _ in sig.inputs) != names or sig.outputs != len(outputs):
        problems.append(f"its inputs are {[n for n, _, _ in sig.inputs]} ({sig.outputs} outputs), a {graph} graph's "
                        f"{list(names)} ({len(outputs)})")
    shapes = [tuple(t["shape"]) for t in entry.io[graph]["inputs"]]
    if [s for _, s, _ in sig.inputs] != shapes:
        problems.append(f"its input shapes are {[list(s) for _, s, _ in sig.inputs]}, the manifest says "
                        f"{[list(s) for s in shapes]}")
    dtypes = [t["dtype"] for t in entry.io[graph]["inputs"]]
    if [d for _, _, d in sig.inputs] != dtypes:
        problems.append(f"its input dtypes are {[d for _, _, d in sig.inputs]}, the manifest says {dtypes}")
    attention = {"float16"} if entry.attention_dtype else set()  # fp16 constants of attention run in fp16
    problems += _precision_problems(set(sig.weights) - {"float8e4m3fn"} - attention, entry.precision, WEIGHT_DTYPES,
                                    ("float16", "bfloat16"))
    fp8_attention = entry.attention_dtype in ("fp8", "fp8-mha")
    fp8 = graph == "denoiser" and (entry.precision.startswith("fp8") or fp8_attention)
    if ("float8e4m3fn" in sig.weights) != fp8:  # FP8 lives in the denoiser's transformer blocks only
        problems.append(f"it {'has no' if fp8 else 'has'} FP8 Q/DQ, and the entry is {entry.variant}")
    # Attention in fp16 casts to it; native attention never does (FP8 attention's scores may, either way).
    fp16_attention = graph == "denoiser" and entry.attention_dtype == "fp16"
    if entry.precision != "fp16" and not fp8_attention and ("float16" in sig.casts) != fp16_attention:
        problems.append(f"it {'has no' if fp16_attention else 'has'} attention cast to float16, and the entry is "
                        f"{entry.variant}")
    return problems


def _aoti_problems(path: Path, entry: Entry, graph: str) -> list[str]:
    sig = aoti_signature(path)
    names, outputs = ROLE_IO[graph]
    problems = []
    if (len(sig.inputs), sig.outputs) != (len(names), len(outputs)):
        problems.append(f"it takes {len(sig.inputs)} inputs and gives {sig.outputs} outputs, a {graph} graph "
                        f"{len(names)} and {len(outputs)}")
    if sig.device != entry.target:
        problems.append(f"it was compiled for {sig.device}, the entry says {entry.target}")
    checked = [s for _, s, _ in sig.inputs]
    shapes = [tuple(t["shape"]) for t in entry.io[graph]["inputs"]]
    if all(checked) and checked != shapes:  # packages whose code checks their inputs' dimensions
        problems.append(f"it checks its inputs against {[list(s) for s in checked]}, the manifest says "
                        f"{[list(s) for s in shapes]}")
    return problems + _precision_problems(set(sig.weights), entry.precision, AOTI_DTYPES, ("bfloat16",))


def _precision_problems(dtypes: set[str], precision: str, table: dict, reduced: tuple[str, ...]) -> list[str]:
    """The precision's own dtype among the weights, and no reduced dtype the precision does not have."""
    want = table.get(precision)
    stray = {d for d in reduced if d != want} & dtypes
    if want is None:
        return [f"a precision {precision!r} no graph of this format has"]
    if dtypes and (want not in dtypes or stray):
        return [f"its weights are {sorted(dtypes)}, a {precision} graph's {want}"]
    return []


def check_labels(entry: Entry) -> None:
    """The entry's bucket and batch agree with the I/O shapes it records (which the files are checked against):
    every input batched by the entry's batch, the denoiser's image input of the bucket's size."""
    x = entry.input_shape("denoiser", "x") if any(t["name"] == "x" for t in entry.io["denoiser"]["inputs"]) else ()
    first = {t["shape"][0] for g in GRAPHS for t in entry.io[g]["inputs"]}
    if x != (entry.batch, 3, *entry.bucket) or first != {entry.batch}:
        raise CheckpointError(f"The entry {entry.key} does not agree with its own I/O shapes.",
                              received=f"bucket {list(entry.bucket)}, batch {entry.batch}; denoiser x {list(x)}, "
                                       f"leading dimensions {sorted(first)}",
                              expected=f"x of shape [{entry.batch}, 3, {entry.bucket[0]}, {entry.bucket[1]}]",
                              fix="rebuild the entry (pid-sdk export / build); never edit a manifest by hand")


def check_entry(folder: Path, entry: Entry) -> None:
    """The entry's labels agree with each other, and every graph of an ONNX or AOTInductor entry is what the entry
    says (plans are judged by their library: tensorrt_backend)."""
    check_labels(entry)
    if entry.backend in ("onnx", "aoti"):
        for graph in GRAPHS:
            check_graph(folder, entry, graph)
