"""Checks every export runs before anything is written: onnx.checker, the graph's dims, the
config <-> graph signature, and onnxruntime-vs-PyTorch parity on fresh inputs.

Each check raises ExportError with a message naming the tensor and the numbers involved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from export.errors import ExportError
from export.model_config import DATA_TYPES
from protos.inference.model_config_pb2 import ModelConfig

__all__ = [
    "ExportError",
    "check_config_signature",
    "check_dims",
    "check_model",
    "check_parity",
    "graph_dims",
    "session",
]

Arrays = dict[str, np.ndarray]
ONNX_TO_CONFIG = {
    onnx.TensorProto.FLOAT: DATA_TYPES["FP32"],
    onnx.TensorProto.FLOAT16: DATA_TYPES["FP16"],
    onnx.TensorProto.INT64: DATA_TYPES["INT64"],
    onnx.TensorProto.INT32: DATA_TYPES["INT32"],
    onnx.TensorProto.BOOL: DATA_TYPES["BOOL"],
    onnx.TensorProto.STRING: DATA_TYPES["STRING"],
}


def check_model(path: Path) -> onnx.ModelProto:
    """onnx.checker with full checks; returns the loaded model."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        return onnx.load(str(path))
    except Exception as err:
        raise ExportError(f"{path.name}: onnx.checker failed: {err}") from err


def graph_dims(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Input and output dims by name: an int when fixed, the symbol (or '?') when not."""
    dims: dict[str, list[int | str]] = {}
    for value in [*model.graph.input, *model.graph.output]:
        shape = value.type.tensor_type.shape.dim
        dims[value.name] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape
        ]
    return dims


def check_dims(model: onnx.ModelProto, expected: Mapping[str, Sequence[int | None]]) -> None:
    """Each named tensor must have exactly these dims: an int is fixed, None is symbolic.

    This catches an exporter that silently froze a dimension meant to be dynamic (the dynamo
    exporter does that to RNN sequence lengths) or left one symbolic that should be fixed.
    """
    actual = graph_dims(model)
    for name, want in expected.items():
        got = actual.get(name)
        if got is None:
            raise ExportError(f"the graph has no tensor {name!r} (it has {sorted(actual)})")
        ok = len(got) == len(want) and all(
            isinstance(g, str) if w is None else g == w for g, w in zip(got, want, strict=True)
        )
        if not ok:
            shown = ["dynamic" if w is None else w for w in want]
            raise ExportError(f"tensor {name!r} has dims {got} in the graph, expected {shown}")
    extra = set(actual) - set(expected)
    if extra:
        raise ExportError(f"the graph has unexpected inputs/outputs {sorted(extra)}")


def check_config_signature(config: ModelConfig, model: onnx.ModelProto) -> None:
    """config.pbtxt's inputs/outputs (names, types, dims without batch) match the graph's."""
    dims = graph_dims(model)
    types = {
        v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]
    }
    for kind, declared, graph in (
        ("input", config.input, model.graph.input),
        ("output", config.output, model.graph.output),
    ):
        names = [v.name for v in graph]
        if sorted(t.name for t in declared) != sorted(names):
            raise ExportError(
                f"config {kind}s {[t.name for t in declared]} differ from the graph's {names}"
            )
        for t in declared:
            if ONNX_TO_CONFIG.get(types[t.name]) != t.data_type:
                raise ExportError(
                    f"{kind} {t.name!r}: config data_type {t.data_type} differs "
                    f"from the graph's element type {types[t.name]}"
                )
            shape = dims[t.name][1:] if config.max_batch_size > 0 else dims[t.name]
            graph_dims_ = [d if isinstance(d, int) else -1 for d in shape]
            if graph_dims_ != list(t.dims):
                raise ExportError(
                    f"{kind} {t.name!r}: config dims {list(t.dims)} differ from "
                    f"the graph's {graph_dims_} (batch excluded)"
                )


def session(path: Path | bytes) -> ort.InferenceSession:
    """A single-threaded CPU session, as serving runs it."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def check_parity(
    reference: Callable[[Arrays], Arrays],
    sess: ort.InferenceSession,
    input_sets: Iterable[Arrays],
    atol: float,
    rtol: float = 0.0,
) -> float:
    """onnxruntime must match `reference` (PyTorch) on every input set; returns the largest
    absolute difference seen. A difference above atol + rtol * |reference| raises ExportError."""
    worst = 0.0
    for inputs in input_sets:
        want = reference(inputs)
        got = dict(zip(want, sess.run(list(want), inputs), strict=True))
        shapes = {k: list(v.shape) for k, v in inputs.items()}
        for name, expected in want.items():
            actual = got[name]
            if actual.shape != expected.shape:
                raise ExportError(
                    f"output {name!r}: onnxruntime gave shape {list(actual.shape)}, "
                    f"PyTorch {list(expected.shape)} (inputs {shapes})"
                )
            diff = np.abs(actual.astype(np.float64) - expected)
            worst = max(worst, float(diff.max(initial=0.0)))
            limit = atol + rtol * np.abs(expected)
            if not np.all(diff <= limit):
                raise ExportError(
                    f"output {name!r}: onnxruntime differs from PyTorch by up to "
                    f"{float(diff.max()):.3g} (tolerance {atol:g} + {rtol:g}*|x|) "
                    f"on inputs {shapes}; nothing was written"
                )
    return worst
