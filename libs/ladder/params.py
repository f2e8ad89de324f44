"""Conversions between protobuf ParamValue maps and plain Python dicts."""

from __future__ import annotations

from collections.abc import Mapping

from ladder.v1 import space_pb2

PlainValue = float | int | str


def to_plain(value: space_pb2.ParamValue) -> PlainValue:
    kind = value.WhichOneof("value")
    if kind == "float_value":
        return value.float_value
    if kind == "int_value":
        return value.int_value
    if kind == "str_value":
        return value.str_value
    raise ValueError("ParamValue has no value set")


def from_plain(value: PlainValue) -> space_pb2.ParamValue:
    if isinstance(value, bool):
        return space_pb2.ParamValue(str_value=str(value))
    if isinstance(value, int):
        return space_pb2.ParamValue(int_value=value)
    if isinstance(value, float):
        return space_pb2.ParamValue(float_value=value)
    return space_pb2.ParamValue(str_value=str(value))


def params_to_dict(params: Mapping[str, space_pb2.ParamValue]) -> dict[str, PlainValue]:
    return {name: to_plain(value) for name, value in sorted(params.items())}


def fill_params(
    target: object, values: Mapping[str, PlainValue]
) -> None:
    """Copy plain values into a protobuf ``map<string, ParamValue>`` field."""
    for name, value in values.items():
        target[name].CopyFrom(from_plain(value))  # type: ignore[index]
