"""V2 `ModelInferRequest` -> `InferRequest` and outputs -> `ModelInferResponse`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from core.errors import InvalidInput, Unsupported
from protos.inference import grpc_service_pb2 as pb
from serving import tensors
from serving.models.base import InferRequest, ServedModel

_SHM_PARAMS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
_SEQUENCE_PARAMS = ("sequence_id", "sequence_start", "sequence_end")


def _param_value(p: pb.InferParameter) -> object:
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind else None


def decode_request(msg: pb.ModelInferRequest, model: ServedModel) -> InferRequest:
    """The request in numpy form. Each input's header (name, datatype, shape) is checked
    against `model` before its payload is decoded, and every size against the bytes
    received, so a request costs no more than what it sent."""
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} "
            "inputs; send every input raw, or none"
        )
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(msg.inputs):
        name = tensor.name
        if name in inputs:
            raise InvalidInput(f"input '{name}' is given twice")
        if any(k in tensor.parameters for k in _SHM_PARAMS):
            raise Unsupported(f"input '{name}': seqserve does not support shared memory")
        shape = list(tensor.shape)
        tensors.check_shape(shape, name)
        tensors.dtype_of(tensor.datatype, name)
        model.check_input(name, tensor.datatype, shape)
        if raw:
            inputs[name] = tensors.from_raw(raw[i], tensor.datatype, shape, name)
        else:
            inputs[name] = tensors.from_contents(tensor, shape)
    outputs = []
    for out in msg.outputs:
        if any(k in out.parameters for k in _SHM_PARAMS):
            raise Unsupported(f"output '{out.name}': seqserve does not support shared memory")
        if "classification" in out.parameters:
            raise Unsupported(f"output '{out.name}': seqserve does not support classification")
        outputs.append(out.name)
    params = {k: _param_value(v) for k, v in msg.parameters.items()}
    seq = [k for k in _SEQUENCE_PARAMS if k in params]
    if seq:
        raise InvalidInput(f"parameter '{seq[0]}': seqserve has no sequence batching")
    timeout_s = None
    if "timeout" in params:
        timeout = params["timeout"]
        if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0:
            raise InvalidInput("parameter 'timeout': microseconds as a non-negative int64")
        timeout_s = timeout / 1e6 or None
    return InferRequest(
        inputs=inputs, outputs=tuple(outputs), parameters=params, timeout_s=timeout_s, id=msg.id
    )


def encode_response(
    model_name: str,
    version: int,
    request_id: str,
    outputs: Mapping[str, np.ndarray],
    declared: Mapping[str, str],
) -> pb.ModelInferResponse:
    """`declared` maps each output name to its V2 datatype from the model config."""
    reply = pb.ModelInferResponse(model_name=model_name, model_version=str(version), id=request_id)
    for name, array in outputs.items():
        datatype = declared[name]
        reply.outputs.add(name=name, datatype=datatype, shape=array.shape)
        reply.raw_output_contents.append(tensors.to_raw(array, datatype))
    return reply
