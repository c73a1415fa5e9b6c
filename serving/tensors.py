"""V2 wire tensors <-> numpy: data types, raw little-endian bytes, BYTES length prefixes,
typed `contents`. Pure functions; every failure is an `InvalidInput` naming the tensor."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from core.errors import InvalidInput
from protos.inference import grpc_service_pb2 as pb
from protos.inference import model_config_pb2 as mc

# V2 datatype string -> numpy dtype (little-endian, as on the wire). BYTES is numpy object.
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

# config.pbtxt data types -> V2 datatype strings (TYPE_STRING is BYTES on the wire).
CONFIG_TO_V2 = {
    mc.TYPE_BOOL: "BOOL",
    mc.TYPE_UINT8: "UINT8",
    mc.TYPE_UINT16: "UINT16",
    mc.TYPE_UINT32: "UINT32",
    mc.TYPE_UINT64: "UINT64",
    mc.TYPE_INT8: "INT8",
    mc.TYPE_INT16: "INT16",
    mc.TYPE_INT32: "INT32",
    mc.TYPE_INT64: "INT64",
    mc.TYPE_FP16: "FP16",
    mc.TYPE_FP32: "FP32",
    mc.TYPE_FP64: "FP64",
    mc.TYPE_STRING: "BYTES",
    mc.TYPE_BF16: "BF16",
}

# onnxruntime's type strings -> V2 datatype strings.
ORT_TO_V2 = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
    "tensor(bfloat16)": "BF16",
}

# Which typed `contents` field carries each datatype.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_LEN = struct.Struct("<I")

# The most elements one tensor may claim. Far above anything the message cap lets through
# (every element costs at least one byte, a BYTES element four), it only keeps arithmetic on
# claimed shapes small; the real bound is the bytes received, checked before any allocation.
MAX_ELEMENTS = 2**31 - 1


def element_count(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def check_shape(shape: Sequence[int], name: str) -> int:
    """The element count of a claimed shape, or InvalidInput when a dimension is negative or
    the shape is absurd: the product of its dimensions, zeros left out, over MAX_ELEMENTS
    (numpy refuses such a shape even with no element in it). Python integers: nothing
    overflows."""
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input '{name}': shape {list(shape)} has a negative dimension")
    if element_count([d for d in shape if d]) > MAX_ELEMENTS:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} claims more than {MAX_ELEMENTS} elements"
        )
    return element_count(shape)


def dtype_of(datatype: str, name: str) -> np.dtype:
    try:
        return DTYPES[datatype]
    except KeyError:
        raise InvalidInput(
            f"input '{name}': datatype '{datatype}' is not supported "
            f"(supported: {', '.join(DTYPES)})"
        ) from None


def decode_bytes(raw: bytes, count: int, name: str) -> np.ndarray:
    """BYTES elements, each a 4-byte little-endian length then the bytes. The claimed count
    is checked against the bytes received before anything is allocated: each element needs
    at least its 4-byte length."""
    if count > len(raw) // 4:
        raise InvalidInput(
            f"input '{name}': raw BYTES data has {len(raw)} bytes, too few for "
            f"the {count} elements the shape claims (4 bytes each at least)"
        )
    out = np.empty(count, dtype=object)
    view = memoryview(raw)
    pos, end = 0, len(raw)
    for i in range(count):
        if pos + 4 > end:
            raise InvalidInput(
                f"input '{name}': raw BYTES data holds {i} elements, the shape says {count}"
            )
        (size,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + size > end:
            raise InvalidInput(
                f"input '{name}': BYTES element {i} claims {size} bytes, only {end - pos} remain"
            )
        out[i] = bytes(view[pos : pos + size])
        pos += size
    if pos != end:
        raise InvalidInput(
            f"input '{name}': {end - pos} bytes left over after {count} BYTES elements"
        )
    return out


def encode_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(_LEN.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def from_raw(raw: bytes, datatype: str, shape: Sequence[int], name: str) -> np.ndarray:
    dtype = dtype_of(datatype, name)
    count = check_shape(shape, name)
    if datatype == "BYTES":
        return decode_bytes(raw, count, name).reshape(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"input '{name}': raw data has {len(raw)} bytes, but shape {list(shape)} of "
            f"{datatype} needs {expected}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def from_contents(
    tensor: pb.ModelInferRequest.InferInputTensor, shape: Sequence[int]
) -> np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    dtype = dtype_of(datatype, name)
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input '{name}': {datatype} must be sent as raw_input_contents")
    values = getattr(tensor.contents, field)
    count = check_shape(shape, name)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': contents.{field} has {len(values)} values, "
            f"shape {list(shape)} needs {count}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    return np.asarray(values, dtype=dtype).reshape(shape)


def to_raw(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return encode_bytes(array)
    return np.ascontiguousarray(array, dtype=DTYPES[datatype]).tobytes()


_BY_NUMPY = {dtype.str: name for name, dtype in DTYPES.items()}


def v2_datatype(array: np.ndarray) -> str:
    """The V2 datatype of a numpy array (object and str arrays are BYTES)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    try:
        return _BY_NUMPY[array.dtype.newbyteorder("<").str]
    except KeyError:
        raise TypeError(f"no V2 datatype for numpy {array.dtype}") from None
