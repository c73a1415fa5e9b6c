"""Reduced precision: dynamic int8 quantisation (CPU) and fp16 weights (GPU serving).

int8: onnxruntime quantises MatMul/Gemm-like and LSTM nodes dynamically (int8 weights,
activations quantised at run time); GRU nodes have no int8 kernel and stay in float.
fp16: every float tensor and node of the network in half precision, with the graph's inputs and
outputs kept FP32 (the pinned tensor interface does not change) and chosen nodes (the baked-in
scaling, whose raw-unit constants fp16 would round) kept FP32. The caller measures the accuracy
change on real data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.float16 import convert_float_to_float16

from export.errors import ExportError

METHOD = "onnxruntime.quantization.quantize_dynamic"
WEIGHT_TYPE = "QInt8"
INT8_OPS = {
    "DynamicQuantizeMatMul",
    "MatMulInteger",
    "DynamicQuantizeLSTM",
    "QAttention",
    "ConvInteger",
    "DynamicQuantizeLinear",
    "MatMulIntegerToFloat",
}


def quantize_int8(src: Path, dst: Path, **options: bool) -> dict[str, int]:
    """Write the int8 version of `src` to `dst`; returns {op type: count} of the int8 nodes.
    `options` go to quantize_dynamic (per_channel, reduce_range: the benchmark's variants)."""
    logging.getLogger("root").setLevel(logging.ERROR)  # quantize_dynamic logs a pre-process hint
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            # outputs of contrib operators (the fused decoder's attention) have no type for
            # ONNX's shape inference; every float tensor of our graphs is float32
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            **options,
        )
    except Exception as err:
        raise ExportError(f"int8 quantisation failed: {err}") from err
    counts: dict[str, int] = {}
    for node in onnx.load(str(dst)).graph.node:
        if node.op_type in INT8_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    if not counts:
        raise ExportError(
            "int8 quantisation changed nothing: the graph has no node onnxruntime "
            "quantises dynamically"
        )
    return counts


FP16_METHOD = "onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)"


def convert_fp16(src: Path, dst: Path, keep_fp32: Callable[[str], bool]) -> dict[str, int]:
    """Write the fp16 version of `src` to `dst`, keeping FP32 the graph's inputs and outputs
    and the nodes whose name `keep_fp32` accepts; returns {"fp16_nodes": n, "fp32_nodes": m}."""
    model = onnx.load(str(src))
    kept = [n.name for n in model.graph.node if keep_fp32(n.name)]
    try:
        half = convert_float_to_float16(model, keep_io_types=True, node_block_list=kept)
    except Exception as err:
        raise ExportError(f"fp16 conversion failed: {err}") from err
    _tidy_casts(half.graph)
    _sort_nodes(half.graph)  # the converter appends the Casts it inserts at the end
    onnx.save(half, str(dst))
    return {"fp16_nodes": len(model.graph.node) - len(kept), "fp32_nodes": len(kept)}


def _cast_to(node: onnx.NodeProto) -> int | None:
    if node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _tidy_casts(graph: onnx.GraphProto) -> None:
    """Mend two faults of the converter's output around the FP32 nodes it keeps:
    - it writes an identical Cast once for each FP32 consumer of a tensor, under one output
      name (the graph then fails the SSA check): the copies are dropped;
    - it sends the tensors between two kept nodes (and the graph's inputs and outputs) through
      FP16 and back, so raw values over 65504 became inf and the rest lost digits: a Cast to
      FP32 of a Cast to FP16 now reads the FP32 tensor itself, and the Casts nobody reads any
      more are removed."""
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    seen: set[str] = set()
    nodes = []
    for node in graph.node:
        if node.op_type == "Cast" and node.output[0] in seen:
            continue
        seen.update(node.output)
        nodes.append(node)
    producer = {o: n for n in nodes for o in n.output}
    outputs = {o.name for o in graph.output}
    same: dict[str, str] = {}  # the FP32 tensor a round trip's end stands for
    for node in nodes:
        source = producer.get(node.input[0]) if node.input else None
        if _cast_to(node) == f32 and source is not None and _cast_to(source) == f16:
            node.input[0] = source.input[0]  # a Cast FP32 -> FP32: an identity
            if node.output[0] not in outputs:
                same[node.output[0]] = source.input[0]
    for node in nodes:  # read the FP32 tensor itself
        for k, name in enumerate(node.input):
            node.input[k] = same.get(name, name)
    while True:
        read = {i for n in nodes for i in n.input} | outputs
        dead = [n for n in nodes if n.op_type == "Cast" and n.output[0] not in read]
        if not dead:
            break
        nodes = [n for n in nodes if n not in dead]
    del graph.node[:]
    graph.node.extend(nodes)


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Reorder `graph.node` topologically (stable: nodes keep their order where they can)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        waiting = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise ExportError(f"fp16 graph has a cycle or a missing input at {waiting[0].name}")
        pending = waiting
    del graph.node[:]
    graph.node.extend(ordered)
