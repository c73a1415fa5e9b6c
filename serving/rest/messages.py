"""Protobuf messages as Triton's HTTP endpoint writes them: the proto3 JSON mapping with the
proto's field names, every field present (zeros too), and 64-bit integers as JSON numbers
rather than the mapping's strings (Triton converts them back the same way, so that
`tritonclient.http` and `perf_analyzer -i http` read numbers)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

_INT64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}


def to_json(message: Message) -> dict[str, Any]:
    doc = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _numbers(message.DESCRIPTOR, doc)
    return doc


def _numbers(descriptor: Descriptor, doc: dict[str, Any]) -> None:
    for field in descriptor.fields:
        if field.name not in doc:
            continue
        value = doc[field.name]
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value_field = entry.fields_by_name["value"]
            for key, item in value.items():
                value[key] = _one(value_field, item)
        elif isinstance(value, list):
            doc[field.name] = [_one(field, item) for item in value]
        else:
            doc[field.name] = _one(field, value)


def _one(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None and isinstance(value, dict):
        _numbers(field.message_type, value)
        return value
    if field.type in _INT64 and isinstance(value, str):
        return int(value)
    return value
