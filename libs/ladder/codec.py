"""Encoding and strict decoding of the Kafka event payloads.

Decoding is strict on purpose: protobuf happily parses many random byte strings
into a message full of unknown fields, so a record is accepted only when it has
no unknown fields and carries the ids its consumers key on. Anything else raises
``BadRecord`` with a reason that ends up in the dead-letter topic.
"""

from __future__ import annotations

import json
import math
from typing import TypeVar

from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from ladder.v1 import events_pb2

M = TypeVar("M", bound=Message)

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
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise BadRecord(f"not a {cls.DESCRIPTOR.full_name}: {exc}") from exc
    unknown = UnknownFieldSet(message)
    if len(unknown):
        numbers = sorted({field.field_number for field in unknown})[:5]
        raise BadRecord(
            f"not a {cls.DESCRIPTOR.full_name}: unknown field numbers {numbers}"
        )
    return message


def _float(value: object, name: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, str):
        # JSON has no NaN/inf literals; publishers send them as strings.
        if value.strip().lower() in {"nan", "inf", "+inf", "-inf", "infinity", "-infinity"}:
            return float(value.strip().lower().replace("infinity", "inf"))
        raise BadRecord(f"field {name!r} must be a number, got string {value!r}")
    return float(value)  # type: ignore[arg-type]


def metric_from_json(payload: bytes) -> events_pb2.MetricReport:
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRecord(f"metric JSON does not parse: {exc}") from exc
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
    report = events_pb2.MetricReport(
        study_id=data["study_id"],
        trial_id=data["trial_id"],
        step=_float(data["step"], "step"),
        value=_float(data["value"], "value"),
        metric=data.get("metric", ""),
        attempt_id=data.get("attempt_id", ""),
        worker_id=data.get("worker_id", ""),
        ts_ms=data.get("ts_ms", 0),
    )
    return report


def parse_metric_report(payload: bytes | None) -> events_pb2.MetricReport:
    """Accept a MetricReport as protobuf or in the documented JSON form."""
    if not payload:
        raise BadRecord("empty payload, expected a metric report")
    if payload.lstrip()[:1] in (b"{", b"["):
        report = metric_from_json(payload)
    else:
        report = decode(events_pb2.MetricReport, payload)
    if not report.study_id or not report.trial_id:
        raise BadRecord("metric report needs study_id and trial_id")
    if not math.isfinite(report.step) or report.step < 0:
        raise BadRecord(f"metric report step must be finite and >= 0, got {report.step}")
    return report
