"""Encoding and strict decoding of the Kafka event payloads.

Decoding is strict on purpose: protobuf happily parses many random byte strings
into a message full of unknown fields, so a record is accepted only when neither it
nor any message nested in it has unknown fields or enum values outside its schema,
and it carries the ids its consumers key on, and every field within its size limit
(``ladder.limits``). Anything else raises ``BadRecord`` with a reason that ends up in
the dead-letter topic.

Decoding is also total: whatever the bytes (not UTF-8, JSON nested past Python's
recursion limit, numbers out of range for their protobuf field, lone surrogates),
the decoders here return a valid message or raise ``BadRecord``, never another
exception; a consumer handing a record on can rely on that
(tests/unit/test_codec_properties.py feeds them arbitrary bytes and JSON).

The JSON metric form accepts Python's ``NaN`` / ``Infinity`` literals and their
string forms for ``value`` (a diverged run's report, as ``json.dumps`` writes it);
``step`` must be finite and >= 0, ``ts_ms`` an integer in 0..2**63-1.
"""

from __future__ import annotations

import json
import math
from typing import TypeVar

from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from ladder import limits
from ladder.errors import InvalidArgument
from ladder.v1 import events_pb2

M = TypeVar("M", bound=Message)

INT64_MAX = 2**63 - 1
# What building a message from decoded values raises for a value its field cannot
# hold: ints out of range (ValueError), str with lone surrogates (UnicodeEncodeError),
# a float too big for a double (OverflowError), a value of the wrong type (TypeError).
_UNREPRESENTABLE = (ValueError, TypeError, OverflowError)

# The documented JSON form of a metric report (README "Publishing metrics").
METRIC_JSON_FIELDS = {
    "study_id": str,
    "trial_id": str,
    "step": (int, float),
    "value": (int, float, str, type(None)),
    "metric": str,
    "attempt_id": str,
    "worker_id": str,
    "ts_ms": int,
}
METRIC_JSON_REQUIRED = ("study_id", "trial_id", "step", "value")


class BadRecord(ValueError):
    """A record that can never be processed; its reason goes to dead-letter."""


def encode(message: Message) -> bytes:
    return message.SerializeToString()


def decode(cls: type[M], payload: bytes | None) -> M:
    if not payload:
        raise BadRecord(f"empty payload, expected {cls.DESCRIPTOR.full_name}")
    message = cls()
    try:
        message.ParseFromString(payload)
    # RuntimeError covers RecursionError (groups nested past the parser's limit).
    except (DecodeError, RuntimeError, *_UNREPRESENTABLE) as exc:
        raise BadRecord(f"not a {cls.DESCRIPTOR.full_name}: {exc}") from exc
    if not message.ListFields():  # only defaults written out (b"\x18\x00"): as empty
        raise BadRecord(f"no field set, expected {cls.DESCRIPTOR.full_name}")
    problem = _schema_problem(message)
    if problem:
        raise BadRecord(f"not a {cls.DESCRIPTOR.full_name}: {problem}")
    _check_limits(message, cls.DESCRIPTOR.name)
    return message


def _check_limits(message: Message, what: str) -> None:
    """Any client can publish on the topics, past the gRPC edge that enforces the size
    limits: a consumer holds each record to the same limits (BadRecord naming the
    field), so an oversize name or reason is never stored or copied on."""
    try:
        limits.check(message)
    except InvalidArgument as exc:
        raise BadRecord(f"{what} {exc}") from None


def _schema_problem(message: Message, path: str = "") -> str | None:
    """Why ``message`` (or one nested in it) is not of its schema: unknown fields, or
    an enum number the schema does not name (proto3 enums parse any number). None
    when it is."""
    unknown = UnknownFieldSet(message)
    if len(unknown):
        numbers = sorted({field.field_number for field in unknown})[:5]
        return f"unknown field numbers {numbers}" + (f" in {path}" if path else "")
    for field, value in message.ListFields():
        name = f"{path}.{field.name}" if path else field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            values = value.values()
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None:
                for item in values:
                    problem = _schema_problem(item, name)
                    if problem:
                        return problem
            continue
        items = value if field.is_repeated else [value]
        if field.message_type is not None:
            for item in items:
                problem = _schema_problem(item, name)
                if problem:
                    return problem
        elif field.enum_type is not None:
            for item in items:
                if item not in field.enum_type.values_by_number:
                    return f"{name} has no value {item} in {field.enum_type.full_name}"
    return None


def _float(value: object, name: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, str):
        # JSON has no NaN/inf literals; publishers send them as strings.
        if value.strip().lower() in {"nan", "inf", "+inf", "-inf", "infinity", "-infinity"}:
            return float(value.strip().lower().replace("infinity", "inf"))
        raise BadRecord(f"field {name!r} must be a number, got string {value!r}")
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError as exc:  # an int beyond a double's range
        raise BadRecord(f"field {name!r} is out of range for a double") from exc


def metric_from_json(payload: bytes) -> events_pb2.MetricReport:
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BadRecord(f"metric JSON does not parse: {type(exc).__name__}: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRecord("metric JSON must be an object")
    for name in METRIC_JSON_REQUIRED:
        if name not in data:
            raise BadRecord(f"metric JSON lacks required field {name!r}")
    for name, value in data.items():
        expected = METRIC_JSON_FIELDS.get(name)
        if expected is None:
            raise BadRecord(f"metric JSON has unknown field {name!r}")
        if isinstance(value, bool) or not isinstance(value, expected):
            raise BadRecord(f"metric JSON field {name!r} has wrong type {type(value).__name__}")
    ts_ms = data.get("ts_ms", 0)
    if not 0 <= ts_ms <= INT64_MAX:
        raise BadRecord(f"metric JSON field 'ts_ms' must be in 0..2**63-1, got {ts_ms}")
    step = _float(data["step"], "step")
    value = _float(data["value"], "value")
    try:
        return events_pb2.MetricReport(
            study_id=data["study_id"],
            trial_id=data["trial_id"],
            step=step,
            value=value,
            metric=data.get("metric", ""),
            attempt_id=data.get("attempt_id", ""),
            worker_id=data.get("worker_id", ""),
            ts_ms=ts_ms,
        )
    except _UNREPRESENTABLE as exc:
        raise BadRecord(f"metric JSON cannot be a MetricReport: {exc}") from exc


def parse_metric_report(payload: bytes | None) -> events_pb2.MetricReport:
    """Accept a MetricReport as protobuf or in the documented JSON form."""
    if not payload:
        raise BadRecord("empty payload, expected a metric report")
    if payload.lstrip()[:1] in (b"{", b"["):
        report = metric_from_json(payload)
        _check_limits(report, "metric report")
    else:
        report = decode(events_pb2.MetricReport, payload)  # limits checked there
    if not report.study_id or not report.trial_id:
        raise BadRecord("metric report needs study_id and trial_id")
    if not math.isfinite(report.step) or report.step < 0:
        raise BadRecord(f"metric report step must be finite and >= 0, got {report.step}")
    return report
