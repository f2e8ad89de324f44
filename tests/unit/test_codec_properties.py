"""Decoding is total: any bytes, any JSON, any protobuf become a valid event or a
``BadRecord`` with a reason, never another exception (ladder.codec), through every
decoder and through the record handlers pure enough to call without a server."""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ladder.bus import Record, dead_letter_record
from ladder.codec import BadRecord, decode, parse_metric_report
from ladder.config import Topics
from ladder.v1 import events_pb2

from services.lineage.ingest import to_ingest

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOPICS = Topics("p.")
EVENTS = (
    events_pb2.MetricReport,
    events_pb2.RungCrossing,
    events_pb2.Decision,
    events_pb2.TrialEvent,
    events_pb2.StudyEvent,
    events_pb2.DeadLetter,
)

# JSON values of every kind: numbers beyond int64 and double, strings with lone
# surrogates and NUL, deep nesting.
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=2**62, max_value=2**1100),
    st.floats(allow_nan=False, allow_infinity=False),
)
texts = st.text(st.characters(codec=None), max_size=40)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)
    ),
    max_leaves=20,
)
metric_keys = st.sampled_from(
    ["study_id", "trial_id", "step", "value", "metric", "attempt_id", "worker_id", "ts_ms"]
)
# Near-valid metric reports: every documented field, each with any JSON value.
metric_objects = st.dictionaries(st.one_of(metric_keys, texts), json_values, max_size=9)


def dumps(value: object) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


def valid_metric(report: events_pb2.MetricReport) -> None:
    assert report.study_id and report.trial_id
    assert math.isfinite(report.step) and report.step >= 0
    assert report.IsInitialized()
    report.SerializeToString()  # a decoded report can be produced again


def metric_outcome(payload: bytes) -> None:
    try:
        report = parse_metric_report(payload)
    except BadRecord as exc:
        assert str(exc)
        return
    valid_metric(report)


@FAST
@given(st.binary(max_size=512))
def test_any_bytes_are_a_metric_report_or_a_bad_record(payload: bytes) -> None:
    metric_outcome(payload)


@FAST
@given(st.one_of(json_values, metric_objects))
def test_any_json_is_a_metric_report_or_a_bad_record(value: object) -> None:
    metric_outcome(dumps(value))


@FAST
@given(st.binary(max_size=512), st.sampled_from(EVENTS))
@example(b"\x18\x00", events_pb2.RungCrossing)  # a field at its default, written out
def test_any_bytes_are_an_event_of_its_schema_or_a_bad_record(
    payload: bytes, cls: type
) -> None:
    try:
        message = decode(cls, payload)
    except BadRecord as exc:
        assert str(exc)
        return
    assert message.SerializeToString()


def test_numbers_beyond_their_field_are_bad_records() -> None:
    base = {"study_id": "s", "trial_id": "t", "step": 1, "value": 0.5}
    for bad in (
        {"ts_ms": 2**63},
        {"ts_ms": -1},
        {"step": 10**400},
        {"value": 10**400},
        {"step": "inf"},
        {"step": float("nan")},
        {"study_id": "\ud800"},
    ):
        try:
            parse_metric_report(dumps({**base, **bad}))
        except BadRecord:
            continue
        raise AssertionError(f"{bad} was accepted")
    assert parse_metric_report(dumps({**base, "ts_ms": 2**63 - 1})).ts_ms == 2**63 - 1


def test_enum_numbers_outside_the_schema_and_nested_unknown_fields_are_bad_records() -> None:
    decision = events_pb2.Decision(study_id="s", trial_id="t")
    decision.action = 99  # proto3 keeps any number; the schema names none
    for message in (decision, events_pb2.TrialEvent(kind=99)):
        try:
            decode(type(message), message.SerializeToString())
        except BadRecord as exc:
            assert "has no value 99" in str(exc)
            continue
        raise AssertionError(f"{message} was accepted")
    event = events_pb2.TrialEvent(kind=events_pb2.TRIAL_COMPLETED)
    event.trial.trial_id = "t"
    # field 99 of the nested Trial, a varint: unknown to the schema
    nested = event.trial.SerializeToString() + b"\x98\x06\x01"
    payload = b"\x08" + bytes([event.kind]) + b"\x12" + bytes([len(nested)]) + nested
    try:
        decode(events_pb2.TrialEvent, payload)
    except BadRecord as exc:
        assert "in trial" in str(exc)
    else:
        raise AssertionError("a nested unknown field was accepted")


@FAST
@given(
    st.sampled_from(TOPICS.all()),
    st.one_of(st.binary(max_size=512), json_values.map(dumps), metric_objects.map(dumps)),
)
def test_lineage_decodes_any_record_of_any_topic_or_refuses_it(topic: str, value: bytes) -> None:
    record = Record(topic, 0, 7, b"k", value, [], 0)
    try:
        item = to_ingest(TOPICS, record)
    except BadRecord as exc:
        assert str(exc)
        return
    assert item.source.topic == topic and item.source.offset == 7


@FAST
@given(texts, st.binary(min_size=1, max_size=64), st.integers(1, 2**21))
def test_a_dead_letter_of_anything_fits_in_one_broker_record(
    reason: str, payload: bytes, repeat: int
) -> None:
    # Up to a 2 MB reason and 4 MB payload: beyond the broker's 1 MiB record limit.
    letter = dead_letter_record("svc", "p.metrics", reason * repeat, payload * repeat)
    assert letter.payload == (payload * repeat)[: 64 * 1024]
    # 64 KiB of payload, 4096 characters of up to 4 bytes, a few ids: far under 1 MiB.
    assert len(letter.SerializeToString()) < 64 * 1024 + 4 * 4096 + 256
    if len(payload) * repeat > 64 * 1024:
        assert f"of {len(payload) * repeat} bytes" in letter.reason
    # The reason with its truncation notes stays within its own limit.
    assert len(letter.reason) <= 4096


def test_a_long_reason_with_a_long_payload_keeps_both_notes_within_the_limit() -> None:
    letter = dead_letter_record("svc", "p.metrics", "r" * 10_000, b"p" * 100_000)
    assert len(letter.reason) == 4096
    assert letter.reason.endswith(
        " [+10000 chars] [payload truncated to 65536 of 100000 bytes]"
    )
