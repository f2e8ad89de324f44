import json
import math

import pytest
from google.protobuf.message import Message
from ladder.codec import BadRecord, decode, encode, parse_metric_report
from ladder.v1 import events_pb2, trial_pb2


def test_protobuf_metric_round_trips() -> None:
    report = events_pb2.MetricReport(study_id="s", trial_id="t", step=3, value=0.5, metric="m")
    assert parse_metric_report(encode(report)) == report


def test_json_metric_is_accepted_with_optional_fields() -> None:
    payload = json.dumps(
        {"study_id": "s", "trial_id": "t", "step": 2, "value": 0.25, "metric": "val_loss"}
    ).encode()
    report = parse_metric_report(payload)
    assert (report.study_id, report.trial_id, report.step, report.value) == ("s", "t", 2, 0.25)
    assert report.metric == "val_loss"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", None])
def test_json_metric_carries_divergence_as_non_finite(value: object) -> None:
    payload = json.dumps({"study_id": "s", "trial_id": "t", "step": 1, "value": value}).encode()
    assert not math.isfinite(parse_metric_report(payload).value)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty payload"),
        (b"\xff\xfe\x00garbage", "not a ladder.v1.MetricReport"),
        (b"{not json", "does not parse"),
        (b"[1, 2]", "must be an object"),
        (json.dumps({"study_id": "s", "step": 1, "value": 1}).encode(), "'trial_id'"),
        (
            json.dumps({"study_id": "s", "trial_id": "t", "step": 1, "value": 1, "x": 1}).encode(),
            "unknown field 'x'",
        ),
        (
            json.dumps({"study_id": "s", "trial_id": "t", "step": "1", "value": 1}).encode(),
            "'step' has wrong type",
        ),
        (
            json.dumps({"study_id": "s", "trial_id": "t", "step": -1, "value": 1}).encode(),
            "step must be finite and >= 0",
        ),
        (json.dumps({"study_id": "", "trial_id": "t", "step": 1, "value": 1}).encode(), "needs"),
    ],
)
def test_bad_metric_payloads_are_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(BadRecord, match=reason):
        parse_metric_report(payload)


def test_protobuf_with_unknown_fields_is_rejected() -> None:
    # A Decision parses as a MetricReport wire-wise only with fields the schema lacks.
    other = events_pb2.DeadLetter(source_topic="x", reason="y", ts_ms=5).SerializeToString()
    with pytest.raises(BadRecord, match="unknown field numbers"):
        decode(events_pb2.MetricReport, other + b"\x78\x01")


def test_a_metric_report_over_a_size_limit_is_a_bad_record() -> None:
    # Plain Kafka publishers skip the gRPC edge; the limits of ladder.limits hold here too.
    payload = json.dumps(
        {"study_id": "s" * 10_000, "trial_id": "t1", "step": 1, "value": 0.5}
    ).encode()
    with pytest.raises(BadRecord, match=r"study_id: 10000 characters, at most 128"):
        parse_metric_report(payload)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (events_pb2.TrialEvent(trial=trial_pb2.Trial(trial_id="t" * 200)), "trial.trial_id"),
        (events_pb2.Decision(study_id="s", trial_id="t", reason="r" * 5000), "reason"),
        (events_pb2.RungCrossing(study_id="s" * 129, trial_id="t"), "study_id"),
        (events_pb2.DeadLetter(source_topic="x", payload=b"p" * 70_000), "payload"),
        (events_pb2.MetricReport(study_id="s", trial_id="t", metric="m" * 300), "metric"),
    ],
)
def test_an_event_over_a_size_limit_is_a_bad_record_naming_the_field(
    message: Message, field: str
) -> None:
    # Any client can publish on the topics: every decoder holds records to the limits.
    with pytest.raises(BadRecord, match=rf"^{type(message).__name__} {field}: \d+ "):
        decode(type(message), message.SerializeToString())
