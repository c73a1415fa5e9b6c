"""Dynamic int8 quantisation with onnxruntime: int8 weights, activations quantised at run time.

onnxruntime quantises MatMul/Gemm-like and LSTM nodes this way (DynamicQuantizeLSTM); GRU nodes
have no int8 kernel and stay in float. The caller measures the accuracy change on real data.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from export.errors import ExportError

METHOD = "onnxruntime.quantization.quantize_dynamic"
WEIGHT_TYPE = "QInt8"
INT8_OPS = {"DynamicQuantizeMatMul", "MatMulInteger", "DynamicQuantizeLSTM", "QAttention",
            "ConvInteger", "DynamicQuantizeLinear", "MatMulIntegerToFloat"}


def quantize_int8(src: Path, dst: Path) -> dict[str, int]:
    """Write the int8 version of `src` to `dst`; returns {op type: count} of the int8 nodes."""
    logging.getLogger("root").setLevel(logging.ERROR)  # quantize_dynamic logs a pre-process hint
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    except Exception as err:
        raise ExportError(f"int8 quantisation failed: {err}") from err
    counts: dict[str, int] = {}
    for node in onnx.load(str(dst)).graph.node:
        if node.op_type in INT8_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    if not counts:
        raise ExportError("int8 quantisation changed nothing: the graph has no node onnxruntime "
                          "quantises dynamically")
    return counts
