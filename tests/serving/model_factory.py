"""Tiny hand-built ONNX models and repositories for serving tests (onnx.helper; no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 18)]


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def affine(path: Path, width: int = 4) -> None:
    """x FP32 [B, width] -> y = 2x + 1, z = sum(x) [B, 1]."""
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["x2"]),
            helper.make_node("Add", ["x2", "one"], ["y"]),
            helper.make_node("ReduceSum", ["x", "axes"], ["z"], keepdims=1),
        ],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 1]),
        ],
        initializer=[two, one, axes],
    )
    _save(graph, path)


def echo_bytes(path: Path) -> None:
    """text BYTES [B, 1] -> same text (ONNX string Identity)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])],
        "echo",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 1])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch", 1])],
    )
    _save(graph, path)


def slow(path: Path, size: int = 256, repeats: int = 160, rows: int | str | None = None) -> None:
    """x FP32 [B, size, size] -> a chain of MatMuls (~25 ms per call here): for queueing.
    `rows="n"` makes the middle dimension variable: the cost grows with the rows sent."""
    w = numpy_helper.from_array(np.eye(size, dtype=np.float32), "w")
    nodes, prev = [], "x"
    for i in range(repeats):
        nodes.append(helper.make_node("MatMul", [prev, "w"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", rows or size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", rows or size, size])],
        initializer=[w],
    )
    _save(graph, path)


def fan_out(path: Path, width: int = 65536) -> None:
    """x FP32 [B, 1] -> y = x * ones [B, width]: a few bytes in, 256 KiB out per row."""
    ones = numpy_helper.from_array(np.ones((1, width), np.float32), "ones")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "ones"], ["y"])],
        "fan_out",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=[ones],
    )
    _save(graph, path)


def fragile(path: Path) -> None:
    """x FP32 [B, N] -> Reshape to [B, 4]: onnxruntime fails at run time unless N == 4."""
    shape = numpy_helper.from_array(np.array([-1, 4], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "fragile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[shape],
    )
    _save(graph, path)


AFFINE_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [{{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }}]
output [{{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }},
        {{ name: "z" data_type: TYPE_FP32 dims: [ 1 ] }}]
{scheduling}
{extra}
"""

ECHO_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 4
input [{ name: "text" data_type: TYPE_STRING dims: [ 1 ] }]
output [{ name: "echo" data_type: TYPE_STRING dims: [ 1 ] }]
"""

SLOW_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 4
input [{{ name: "x" data_type: TYPE_FP32 dims: [ 256, 256 ] }}]
output [{{ name: "y" data_type: TYPE_FP32 dims: [ 256, 256 ] }}]
dynamic_batching {{
  max_queue_delay_microseconds: 0
  default_queue_policy {{ max_queue_size: {queue} }}
}}
"""

FAN_OUT_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [ 65536 ] }]
"""

FRAGILE_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 4
input [{ name: "x" data_type: TYPE_FP32 dims: [ -1 ] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }]
model_warmup [{
  name: "four" batch_size: 1
  inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } }
}]
"""


def add_model(
    repo: Path, name: str, config: str, build: object = None, versions: tuple[int, ...] = (1,)
) -> Path:
    """Write <repo>/<name>/config.pbtxt and, with `build`, <version>/model.onnx."""
    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(config)
    for v in versions:
        if build is not None:
            build(model_dir / str(v) / "model.onnx")  # type: ignore[operator]
    return model_dir


def standard_repository(repo: Path) -> Path:
    """The repository most serving tests use: good models beside broken ones."""
    add_model(
        repo,
        "affine",
        AFFINE_CONFIG.format(
            scheduling="dynamic_batching { max_queue_delay_microseconds: 2000 }", extra=""
        ),
        affine,
    )
    add_model(repo, "affine_nobatch", AFFINE_CONFIG.format(scheduling="", extra=""), affine)
    add_model(repo, "echo", ECHO_CONFIG, echo_bytes)
    add_model(repo, "slow", SLOW_CONFIG.format(queue=2), slow)
    add_model(repo, "fragile", FRAGILE_CONFIG, fragile)
    corrupt = add_model(repo, "corrupt", AFFINE_CONFIG.format(scheduling="", extra=""))
    (corrupt / "1").mkdir()
    (corrupt / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    add_model(
        repo,
        "mismatch",
        AFFINE_CONFIG.format(scheduling="", extra="").replace('name: "x"', 'name: "wrong"'),
        affine,
    )
    return repo


def mean_forecaster(
    path: Path,
    window: int,
    horizon: int,
    n_in: int,
    targets: list[int],
    n_future: int,
    quantile_offsets: list[float],
    matmuls: int = 0,
) -> None:
    """A forecaster-shaped graph with a known answer: forecast[b, h, t] = mean over the window
    of past[b, :, targets[t]] + sum(future[b, h, :]); quantiles add fixed offsets. `matmuls`
    chains that many 256 x 256 MatMuls on the input, times 0, into the forecast: a slow model
    with the same answer (~25 ms per 160 here)."""
    idx = numpy_helper.from_array(np.array(targets, np.int64), "targets")
    axis1 = numpy_helper.from_array(np.array([1], np.int64), "axis1")
    axis2 = numpy_helper.from_array(np.array([2], np.int64), "axis2")
    axis3 = numpy_helper.from_array(np.array([3], np.int64), "axis3")
    offsets = numpy_helper.from_array(np.array(quantile_offsets, np.float32), "offsets")
    nodes = [
        helper.make_node("ReduceMean", ["past", "axis1"], ["mean"], keepdims=1),  # [B,1,F_in]
        helper.make_node("Gather", ["mean", "targets"], ["level"], axis=2),  # [B,1,F_out]
        helper.make_node("ReduceSum", ["future", "axis2"], ["fsum"], keepdims=1),  # [B,H,1]
        helper.make_node("Add", ["level", "fsum"], ["forecast" if not matmuls else "fast"]),
    ]
    initializers = [idx, axis1, axis2, axis3, offsets]
    if matmuls:
        initializers += [
            numpy_helper.from_array(np.array([1, 256, 256], np.int64), "square"),
            numpy_helper.from_array(np.eye(256, dtype=np.float32), "eye"),
            numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
            numpy_helper.from_array(np.array([1, 2], np.int64), "axes12"),
        ]
        nodes += [
            helper.make_node("ReduceMean", ["mean", "axis2"], ["m"], keepdims=1),
            helper.make_node("Expand", ["m", "square"], ["h0"]),
        ]  # [B,256,256]
        for i in range(matmuls):
            nodes.append(helper.make_node("MatMul", [f"h{i}", "eye"], [f"h{i + 1}"]))
        nodes += [
            helper.make_node(
                "ReduceMean", [f"h{matmuls}", "axes12"], ["hm"], keepdims=1
            ),  # [B,1,1]
            helper.make_node("Mul", ["hm", "zero"], ["nothing"]),
            helper.make_node("Add", ["fast", "nothing"], ["forecast"]),
        ]
    nodes += [
        helper.make_node("Unsqueeze", ["forecast", "axis3"], ["f4"]),  # [B,H,F_out,1]
        helper.make_node("Add", ["f4", "offsets"], ["quantiles"]),
    ]  # [B,H,F_out,Q]
    n_out, q = len(targets), len(quantile_offsets)
    graph = helper.make_graph(
        nodes,
        "mean_forecaster",
        [
            helper.make_tensor_value_info("past", TensorProto.FLOAT, ["batch", window, n_in]),
            helper.make_tensor_value_info(
                "future", TensorProto.FLOAT, ["batch", horizon, n_future]
            ),
        ],
        [
            helper.make_tensor_value_info("forecast", TensorProto.FLOAT, ["batch", horizon, n_out]),
            helper.make_tensor_value_info(
                "quantiles", TensorProto.FLOAT, ["batch", horizon, n_out, q]
            ),
        ],
        initializer=initializers,
    )
    _save(graph, path)


FORECASTER_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 4
input [{ name: "past" data_type: TYPE_FP32 dims: [ 6, 3 ] },
       { name: "future" data_type: TYPE_FP32 dims: [ 2, 3 ] }]
output [{ name: "forecast" data_type: TYPE_FP32 dims: [ 2, 1 ] },
        { name: "quantiles" data_type: TYPE_FP32 dims: [ 2, 1, 3 ] }]
dynamic_batching { max_queue_delay_microseconds: 0 }
parameters [
  { key: "seqserve_schema" value: { string_value: "1" } },
  { key: "task" value: { string_value: "forecaster" } },
  { key: "architecture" value: { string_value: "mean-test" } },
  { key: "input_window" value: { string_value: "6" } },
  { key: "horizon" value: { string_value: "2" } },
  { key: "past_features" value: { string_value: "[\\"price\\", \\"index\\", \\"mentions\\"]" } },
  { key: "target_names" value: { string_value: "[\\"price\\"]" } },
  { key: "future_features" value: { string_value: "[\\"hour\\", \\"weekday\\", \\"promo\\"]" } },
  { key: "frequency_seconds" value: { string_value: "3600" } },
  { key: "quantiles" value: { string_value: "[0.1, 0.5, 0.9]" } },
  { key: "metrics" value: { string_value: "{\\"test_mse\\": 0.25, \\"epochs\\": 3}" } }
]
"""


# The same model on business days: a pandas offset alias and the holidays of its data.
BUSINESS_DAY_PARAMETERS = (
    '{ key: "frequency" value: { string_value: "B" } },\n'
    '  { key: "holidays" value: { string_value: "[\\"2024-01-15\\"]" } },'
)


def add_forecaster(
    repo: Path, name: str = "fc", matmuls: int = 0, business_days: bool = False
) -> Path:
    config = FORECASTER_CONFIG
    if business_days:
        config = config.replace(
            '{ key: "frequency_seconds" value: { string_value: "3600" } },',
            BUSINESS_DAY_PARAMETERS,
        )
    return add_model(
        repo,
        name,
        config,
        lambda p: mean_forecaster(
            p,
            window=6,
            horizon=2,
            n_in=3,
            targets=[0],
            n_future=3,
            quantile_offsets=[-1.0, 0.0, 1.0],
            matmuls=matmuls,
        ),
    )
