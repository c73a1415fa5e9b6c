"""KServe V2 REST inference bodies <-> the V2 request and numpy outputs.

A request body is a JSON object, optionally followed by binary tensor data (Triton's binary
tensor extension, which `tritonclient.http` uses by default): the header
`Inference-Header-Content-Length` gives the JSON's length, and each input whose
`parameters.binary_data_size` is set takes that many bytes of what follows, in order. Inputs
sent as JSON `data` (nested or flat, row-major) become the same raw little-endian bytes, so
every request goes through the gRPC path's one decoder (`serving.servicers.codec`) with its
checks of names, types, shapes and sizes against the model. Outputs go back as JSON `data`, or
as binary data when asked (`outputs[].parameters.binary_data`, or the request parameter
`binary_data_output` for all outputs when none are listed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import InvalidInput
from protos.inference import grpc_service_pb2 as pb
from serving import tensors
from serving.models.base import InferRequest, ServedModel
from serving.servicers.codec import decode_request

HEADER_LENGTH = "Inference-Header-Content-Length"
_KINDS = {"BOOL": "b", "FP16": "iuf", "FP32": "iuf", "FP64": "iuf"}  # else integers: "iu"


@dataclass(frozen=True)
class Decoded:
    request: InferRequest
    binary: frozenset[str]  # outputs to send as binary data
    binary_by_default: bool  # for outputs the request did not list


def _object(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: expected a JSON object")
    return value


def _parameter(key: str, value: Any, where: str) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise InvalidInput(f"{where} '{key}': {value} does not fit in int64")
        return pb.InferParameter(int64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    if isinstance(value, str):
        return pb.InferParameter(string_param=value)
    raise InvalidInput(f"{where} '{key}': expected a boolean, number or string")


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}: expected true or false")
    return value


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    ):
        raise InvalidInput(f"input '{name}': shape must be a list of integers")
    tensors.check_shape(value, name)
    return value


def _from_json(data: Any, datatype: str, shape: list[int], name: str) -> bytes:
    """JSON `data` (nested or flat) as the raw bytes of a tensor of `shape`."""
    count = tensors.element_count(shape)
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat: list[Any] = []
        stack = [iter(data)]
        while stack:  # flatten without recursion: depth is the client's to choose
            item = next(stack[-1], stack)
            if item is stack:
                stack.pop()
            elif isinstance(item, list):
                stack.append(iter(item))
            elif isinstance(item, str):
                flat.append(item.encode("utf-8"))
            else:
                raise InvalidInput(f"input '{name}': BYTES data must be strings")
            if len(flat) > count:
                break
        if len(flat) != count:
            raise InvalidInput(
                f"input '{name}': data holds {len(flat)} elements or more, "
                f"shape {shape} needs {count}"
            )
        elements = np.empty(count, dtype=object)
        elements[:] = flat
        return tensors.encode_bytes(elements)
    try:
        array = np.array(data)
    except (ValueError, OverflowError, RecursionError):
        raise InvalidInput(f"input '{name}': data is not a regular array of numbers") from None
    if array.dtype.kind not in _KINDS.get(datatype, "iu") or array.size != count:
        raise InvalidInput(
            f"input '{name}': data is {array.size} values of kind {array.dtype.kind!r}, "
            f"shape {shape} of {datatype} needs {count} "
            f"{'booleans' if datatype == 'BOOL' else 'numbers'}"
        )
    dtype = tensors.DTYPES[datatype]
    with np.errstate(all="ignore"):
        cast = array.astype(dtype)
    if array.dtype.kind in "iu" and not np.array_equal(cast, array):
        raise InvalidInput(f"input '{name}': a value is out of range for {datatype}")
    return cast.tobytes()


def decode(body: bytes, header_length: str | None, model: ServedModel) -> Decoded:
    """The request in numpy form (the gRPC path's checks), and how to send its outputs."""
    try:
        return _decode(body, header_length, model)
    except UnicodeEncodeError as err:  # JSON may escape a lone surrogate: "\ud800"
        bad = err.object[err.start : err.end]
        raise InvalidInput(
            f"the request holds text that is not valid Unicode: {bad!a} (a lone UTF-16 "
            "surrogate escape)"
        ) from None


def _decode(body: bytes, header_length: str | None, model: ServedModel) -> Decoded:
    if header_length is None:
        header, binary = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidInput(
                f"{HEADER_LENGTH}: {header_length!r} is not a length within the "
                f"{len(body)}-byte body"
            )
        header, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        doc = json.loads(header)
    except (ValueError, RecursionError) as err:
        raise InvalidInput(f"the request is not valid JSON: {err}") from None
    doc = _object(doc, "the request")
    msg = pb.ModelInferRequest(model_name=model.name, model_version=str(model.version))
    if not isinstance(doc.get("id", ""), str):
        raise InvalidInput("id: expected a string")
    msg.id = doc.get("id", "")
    params = _object(doc.get("parameters"), "parameters")
    binary_by_default = _flag(params.pop("binary_data_output", False), "binary_data_output")
    for key, value in params.items():
        msg.parameters[key].CopyFrom(_parameter(key, value, "parameter"))
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("inputs: expected a list of input tensors")
    offset = 0
    for item in inputs:
        item = _object(item, "inputs[]")
        name, datatype = item.get("name"), item.get("datatype")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise InvalidInput("inputs[]: every input needs a string name and datatype")
        shape = _shape(item.get("shape"), name)
        tensors.dtype_of(datatype, name)
        model.check_input(name, datatype, shape)  # before its payload is read
        tensor = msg.inputs.add(name=name, datatype=datatype, shape=shape)
        params = _object(item.get("parameters"), f"input '{name}' parameters")
        for key, value in params.items():
            if key != "binary_data_size":
                tensor.parameters[key].CopyFrom(_parameter(key, value, f"input '{name}' parameter"))
        size = params.get("binary_data_size")
        if size is None:
            if "data" not in item:
                raise InvalidInput(f"input '{name}': no data and no binary_data_size")
            msg.raw_input_contents.append(_from_json(item["data"], datatype, shape, name))
        else:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"input '{name}': binary_data_size must be a byte count")
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input '{name}': binary_data_size {size} runs past the "
                    f"{len(binary) - offset} binary bytes left"
                )
            msg.raw_input_contents.append(binary[offset : offset + size])
            offset += size
    if offset != len(binary):
        raise InvalidInput(
            f"{len(binary) - offset} binary bytes follow the inputs' binary_data_size total"
        )
    binary_outputs = set()
    for item in doc.get("outputs") or []:
        item = _object(item, "outputs[]")
        name = item.get("name")
        if not isinstance(name, str):
            raise InvalidInput("outputs[]: every output needs a string name")
        out = msg.outputs.add(name=name)
        for key, value in _object(item.get("parameters"), f"output '{name}' parameters").items():
            if key == "binary_data":
                if _flag(value, f"output '{name}' parameter 'binary_data'"):
                    binary_outputs.add(name)
            else:
                out.parameters[key].CopyFrom(_parameter(key, value, f"output '{name}' parameter"))
    return Decoded(decode_request(msg, model), frozenset(binary_outputs), binary_by_default)


def _json_data(array: np.ndarray, datatype: str, name: str) -> list:
    if datatype != "BYTES":
        return array.reshape(-1).tolist()
    try:
        return [
            item if isinstance(item, str) else bytes(item).decode("utf-8")
            for item in array.reshape(-1)
        ]
    except UnicodeDecodeError:
        raise InvalidInput(
            f"output '{name}': its bytes are not UTF-8 text; ask for it as binary data "
            "(outputs[].parameters.binary_data)"
        ) from None


def encode(
    model: ServedModel,
    request_id: str,
    outputs: Mapping[str, np.ndarray],
    decoded: Decoded,
) -> tuple[bytes, int | None]:
    """The response body, and the JSON's length when binary data follows it."""
    declared = {n: s.datatype for n, s in model.outputs.items()}
    listed = set(decoded.request.outputs)
    doc_outputs, blobs = [], []
    for name, array in outputs.items():
        datatype = declared[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in decoded.binary or (not listed and decoded.binary_by_default):
            raw = tensors.to_raw(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _json_data(array, datatype, name)
        doc_outputs.append(entry)
    doc = {
        "model_name": model.name,
        "model_version": str(model.version),
        **({"id": request_id} if request_id else {}),
        "outputs": doc_outputs,
    }
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
