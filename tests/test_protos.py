"""The protos keep Triton's wire contract: names and field numbers tritonclient relies on."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from protos.inference import grpc_service_pb2 as pb
from protos.inference import model_config_pb2 as mc
from protos.seqserve.forecast.v1 import forecast_service_pb2 as fpb
from protos.seqserve.translate.v1 import translate_service_pb2 as tpb

FIELDS = [
    (
        pb.ModelInferRequest,
        {
            "model_name": 1,
            "model_version": 2,
            "id": 3,
            "parameters": 4,
            "inputs": 5,
            "outputs": 6,
            "raw_input_contents": 7,
        },
    ),
    (
        pb.ModelInferRequest.InferInputTensor,
        {"name": 1, "datatype": 2, "shape": 3, "parameters": 4, "contents": 5},
    ),
    (
        pb.ModelInferResponse,
        {
            "model_name": 1,
            "model_version": 2,
            "id": 3,
            "parameters": 4,
            "outputs": 5,
            "raw_output_contents": 6,
        },
    ),
    (
        pb.InferParameter,
        {
            "bool_param": 1,
            "int64_param": 2,
            "string_param": 3,
            "double_param": 4,
            "uint64_param": 5,
        },
    ),
    (
        pb.InferTensorContents,
        {
            "bool_contents": 1,
            "int_contents": 2,
            "int64_contents": 3,
            "uint_contents": 4,
            "uint64_contents": 5,
            "fp32_contents": 6,
            "fp64_contents": 7,
            "bytes_contents": 8,
        },
    ),
    (
        pb.ModelStatistics,
        {
            "name": 1,
            "version": 2,
            "last_inference": 3,
            "inference_count": 4,
            "execution_count": 5,
            "inference_stats": 6,
            "batch_stats": 7,
            "memory_usage": 8,
            "response_stats": 9,
        },
    ),
    (
        pb.InferStatistics,
        {
            "success": 1,
            "fail": 2,
            "queue": 3,
            "compute_input": 4,
            "compute_infer": 5,
            "compute_output": 6,
            "cache_hit": 7,
            "cache_miss": 8,
        },
    ),
    (pb.ModelStreamInferResponse, {"error_message": 1, "infer_response": 2}),
    (pb.RepositoryIndexResponse.ModelIndex, {"name": 1, "version": 2, "state": 3, "reason": 4}),
    (
        mc.ModelConfig,
        {
            "name": 1,
            "platform": 2,
            "version_policy": 3,
            "max_batch_size": 4,
            "input": 5,
            "output": 6,
            "instance_group": 7,
            "dynamic_batching": 11,
            "optimization": 12,
            "sequence_batching": 13,
            "parameters": 14,
            "ensemble_scheduling": 15,
            "model_warmup": 16,
            "backend": 17,
            "model_transaction_policy": 19,
            "response_cache": 24,
        },
    ),
    (
        mc.ModelInput,
        {
            "name": 1,
            "data_type": 2,
            "format": 3,
            "dims": 4,
            "reshape": 5,
            "is_shape_tensor": 6,
            "allow_ragged_batch": 7,
            "optional": 8,
        },
    ),
    (
        mc.ModelOutput,
        {
            "name": 1,
            "data_type": 2,
            "dims": 3,
            "label_filename": 4,
            "reshape": 5,
            "is_shape_tensor": 6,
        },
    ),
    (
        mc.ModelDynamicBatching,
        {
            "preferred_batch_size": 1,
            "max_queue_delay_microseconds": 2,
            "preserve_ordering": 3,
            "priority_levels": 4,
            "default_priority_level": 5,
            "default_queue_policy": 6,
            "priority_queue_policy": 7,
        },
    ),
    (
        mc.ModelQueuePolicy,
        {
            "timeout_action": 1,
            "default_timeout_microseconds": 2,
            "allow_timeout_override": 3,
            "max_queue_size": 4,
        },
    ),
]


@pytest.mark.parametrize(("message", "numbers"), FIELDS, ids=lambda x: getattr(x, "__name__", ""))
def test_field_numbers(message: type, numbers: dict[str, int]) -> None:
    got = {f.name: f.number for f in message.DESCRIPTOR.fields}
    assert {name: got.get(name) for name in numbers} == numbers


def test_service_and_package_names() -> None:
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    rpcs = {m.name for m in service.methods}
    assert {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    } <= rpcs
    stream = service.methods_by_name["ModelStreamInfer"]
    assert stream.client_streaming and stream.server_streaming
    assert mc.DataType.Value("TYPE_FP32") == 11 and mc.DataType.Value("TYPE_STRING") == 13
    assert fpb.DESCRIPTOR.package == "seqserve.forecast.v1"
    assert tpb.DESCRIPTOR.package == "seqserve.translate.v1"
    assert (
        tpb.DESCRIPTOR.services_by_name["Translator"]
        .methods_by_name["TranslateStream"]
        .server_streaming
    )


def test_config_pbtxt_round_trip() -> None:
    text = """
    name: "m"
    platform: "onnxruntime_onnx"
    max_batch_size: 32
    input [{ name: "past" data_type: TYPE_FP32 dims: [ 96, 7 ] }]
    output [{ name: "forecast" data_type: TYPE_FP32 dims: [ 24, 1 ] }]
    dynamic_batching { max_queue_delay_microseconds: 200 }
    instance_group [{ count: 2 kind: KIND_CPU }]
    parameters { key: "seqserve_schema" value: { string_value: "1" } }
    """
    cfg = text_format.Parse(text, mc.ModelConfig())
    assert cfg.input[0].dims == [96, 7]
    assert cfg.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert text_format.Parse(text_format.MessageToString(cfg), mc.ModelConfig()) == cfg


def test_every_rpc_and_field_of_our_apis_is_documented() -> None:
    import re

    from tests.conftest import ROOT

    for path in (ROOT / "protos" / "seqserve").rglob("*.proto"):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            if re.match(
                r"^(rpc |message |service |enum |(repeated |map<)?[\w.<>, ]+ \w+ = \d+;)", stripped
            ):
                assert lines[i - 1].strip().startswith("//"), f"{path.name}:{i + 1} {stripped}"
