"""Build the config.pbtxt every seqserve model shares (Triton's ModelConfig for onnxruntime).

Fixed choices, the same for every model (see docs/model-repository.md):
- `max_batch_size: 64`: dims in config.pbtxt exclude the batch dimension;
- `dynamic_batching { max_queue_delay_microseconds: 0 }`: eager batching, as Triton's default: a
  lone request runs at once, and requests that arrive while the instance is busy run together;
- `default_queue_policy { max_queue_size: 1024 }`: a bounded queue (Triton's default is
  unbounded); past it a request is refused at once with RESOURCE_EXHAUSTED, retryable;
- one CPU instance, and only the latest version served.
Task metadata goes in `parameters` only: string values, lists and records as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from protos.inference import model_config_pb2 as mc

SCHEMA_VERSION = "1"
MAX_BATCH_SIZE = 64
MAX_QUEUE_DELAY_US = 0
MAX_QUEUE_SIZE = 1024  # requests waiting per model version (docs/serving.md, "Security")

DATA_TYPES = {
    "FP32": mc.TYPE_FP32,
    "FP16": mc.TYPE_FP16,
    "INT64": mc.TYPE_INT64,
    "INT32": mc.TYPE_INT32,
    "BOOL": mc.TYPE_BOOL,
    "STRING": mc.TYPE_STRING,
}


@dataclass(frozen=True)
class Tensor:
    """One graph input or output; `dims` exclude the batch dimension, -1 = variable."""

    name: str
    dims: tuple[int, ...]
    data_type: str = "FP32"


def parameter_value(value: object) -> str:
    """Strings stay as they are; everything else (numbers, lists, records) is JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def onnx_model_config(
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    parameters: Mapping[str, object],
    name: str = "",
    max_batch_size: int = MAX_BATCH_SIZE,
    max_queue_delay_us: int = MAX_QUEUE_DELAY_US,
) -> mc.ModelConfig:
    """A ModelConfig for an ONNX graph served by onnxruntime, with seqserve's fixed settings."""
    config = mc.ModelConfig(
        name=name, platform="onnxruntime_onnx", backend="onnxruntime", max_batch_size=max_batch_size
    )
    for t in inputs:
        config.input.add(name=t.name, data_type=DATA_TYPES[t.data_type], dims=list(t.dims))
    for t in outputs:
        config.output.add(name=t.name, data_type=DATA_TYPES[t.data_type], dims=list(t.dims))
    config.dynamic_batching.SetInParent()  # present even with every field at its default
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    config.dynamic_batching.default_queue_policy.max_queue_size = MAX_QUEUE_SIZE
    # KIND_AUTO: the server's --device decides (KIND_CPU would pin the model to CPU).
    config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_AUTO)
    config.version_policy.latest.num_versions = 1
    config.parameters["seqserve_schema"].string_value = SCHEMA_VERSION
    for key, value in parameters.items():
        config.parameters[key].string_value = parameter_value(value)
    return config
