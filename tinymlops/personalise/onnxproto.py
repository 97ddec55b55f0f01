"""Just enough of ONNX's protobuf schema to read a model's last layer and expose one of its tensors.

A device has no `onnx` package (the core is numpy and onnxruntime), but onnxruntime depends on protobuf, and an
ONNX model is a protobuf `ModelProto`.  The messages below declare the fields of `onnx/onnx.proto` (field numbers
and types as there) that personalisation reads; protobuf keeps every other field of the file as an unknown field
and writes it back unchanged, so a model parsed here and serialised again is the same model, plus what was added.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "tinymlops_onnx_subset"
_F = descriptor_pb2.FieldDescriptorProto
# Declared `[packed = true]` in onnx.proto: written back packed, as ONNX writers wrote them.
PACKED = {"float_data", "int32_data", "int64_data", "double_data"}
# (message, [(field, number, type, label, message type)]) from onnx.proto (proto2)
_MESSAGES: list[tuple[str, list[tuple[str, int, int, int, str | None]]]] = [
    ("TensorProto", [
        ("dims", 1, _F.TYPE_INT64, _F.LABEL_REPEATED, None),
        ("data_type", 2, _F.TYPE_INT32, _F.LABEL_OPTIONAL, None),
        ("float_data", 4, _F.TYPE_FLOAT, _F.LABEL_REPEATED, None),
        ("int32_data", 5, _F.TYPE_INT32, _F.LABEL_REPEATED, None),
        ("int64_data", 7, _F.TYPE_INT64, _F.LABEL_REPEATED, None),
        ("name", 8, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
        ("raw_data", 9, _F.TYPE_BYTES, _F.LABEL_OPTIONAL, None),
        ("double_data", 10, _F.TYPE_DOUBLE, _F.LABEL_REPEATED, None),
        ("data_location", 14, _F.TYPE_INT32, _F.LABEL_OPTIONAL, None),
    ]),
    ("AttributeProto", [
        ("name", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
        ("f", 2, _F.TYPE_FLOAT, _F.LABEL_OPTIONAL, None),
        ("i", 3, _F.TYPE_INT64, _F.LABEL_OPTIONAL, None),
        ("t", 5, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "TensorProto"),
        ("ints", 8, _F.TYPE_INT64, _F.LABEL_REPEATED, None),
    ]),
    ("NodeProto", [
        ("input", 1, _F.TYPE_STRING, _F.LABEL_REPEATED, None),
        ("output", 2, _F.TYPE_STRING, _F.LABEL_REPEATED, None),
        ("name", 3, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
        ("op_type", 4, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
        ("attribute", 5, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "AttributeProto"),
        ("domain", 7, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
    ]),
    ("ValueInfoProto", [
        ("name", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
    ]),
    ("GraphProto", [
        ("node", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "NodeProto"),
        ("initializer", 5, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "TensorProto"),
        ("input", 11, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "ValueInfoProto"),
        ("output", 12, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "ValueInfoProto"),
    ]),
    ("ModelProto", [
        ("graph", 7, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "GraphProto"),
    ]),
]


def _model_class() -> Any:
    """The ModelProto class of this subset, built once in a private descriptor pool."""
    file = descriptor_pb2.FileDescriptorProto(name="tinymlops_onnx_subset.proto", package=PACKAGE, syntax="proto2")
    for name, fields in _MESSAGES:
        message = file.message_type.add(name=name)
        for field, number, kind, label, type_name in fields:
            entry = message.field.add(name=field, number=number, type=kind, label=label)
            if type_name is not None:
                entry.type_name = f".{PACKAGE}.{type_name}"
            if field in PACKED:
                entry.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.ModelProto"))


ModelProto = _model_class()


def parse_model(model: bytes) -> Any:
    """The model's ModelProto (this subset's fields readable, the rest kept as it was)."""
    parsed = ModelProto()
    parsed.ParseFromString(model)
    return parsed
