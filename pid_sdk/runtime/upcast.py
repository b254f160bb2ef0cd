"""The fp32 twin of a bf16 graph: the same nodes and weights with every bf16 tensor widened to fp32.

ONNX Runtime's CPU provider has no bf16 kernels, so a bf16 (or FP8-in-bf16) export could not be checked anywhere
but on a GPU. Widening bf16 -> fp32 is exact for the weights, so the twin runs the exported graph's own weights,
wiring, Q/DQ and constants; only the bf16 rounding of activations is gone. `compare` reports an entry that ran
this way as such, never as the bf16 graph itself.
"""

from __future__ import annotations

from pathlib import Path

EXTERNAL_DATA_BYTES = 1 << 30  # graphs over 1 GiB keep their weights beside them (protobuf's limit is 2 GiB)


def fp32_twin(path: Path, out: Path) -> Path:
    """Write the widened copy of the graph at `path` (external weights read from beside it) to `out`."""
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    _widen_graph(model.graph)
    for function in model.functions:
        _widen_nodes(function.node)
    large = sum(t.ByteSize() for t in model.graph.initializer) > EXTERNAL_DATA_BYTES
    onnx.save(model, str(out), save_as_external_data=large, location=out.name + ".data" if large else None)
    return out


def _widen_graph(graph) -> None:
    for i, tensor in enumerate(graph.initializer):
        graph.initializer[i].CopyFrom(_widen_tensor(tensor))
    for value in list(graph.input) + list(graph.output):
        _widen_type(value.type)
    del graph.value_info[:]  # re-inferred by ONNX Runtime from the widened graph
    _widen_nodes(graph.node)


def _widen_nodes(nodes) -> None:
    import onnx

    bf16 = onnx.TensorProto.BFLOAT16
    for node in nodes:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.INT and attr.name in ("to", "dtype") and attr.i == bf16:
                attr.i = onnx.TensorProto.FLOAT
            elif attr.type == onnx.AttributeProto.TENSOR:
                attr.t.CopyFrom(_widen_tensor(attr.t))
            elif attr.type == onnx.AttributeProto.GRAPH:
                _widen_graph(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _widen_graph(g)


def _widen_tensor(tensor):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    if tensor.data_type != onnx.TensorProto.BFLOAT16:
        return tensor
    wide = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name)
    return wide


def _widen_type(type_proto) -> None:
    import onnx

    if type_proto.tensor_type.elem_type == onnx.TensorProto.BFLOAT16:
        type_proto.tensor_type.elem_type = onnx.TensorProto.FLOAT
