"""Early-stop as a real process against the real broker.

The sending side is what another team's service would do: a plain kafka-python
producer publishing metric reports in the documented JSON form.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from ladder.config import Settings
from ladder.testing import signed_headers
from ladder.v1 import events_pb2, study_pb2

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
# These tests' trials exist only in their reports (no evaluate, no trial store): the
# trial check is off here; test_bus_attacks.py runs it against real trials.
SYNTHETIC_TRIALS = {"LADDER_EARLYSTOP_TRIAL_CHECK": "off"}


class Tail:
    """Reads everything published on ``topics`` after it was created."""

    def __init__(self, settings: Settings, topics: list[str]) -> None:
        self.consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
        )
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(self.consumer.partitions_for_topic(topic) or ())
        ]
        self.consumer.assign(partitions)
        self.consumer.seek_to_end(*partitions)
        for tp in partitions:
            self.consumer.position(tp)  # resolve "end" now, before anything is published
        self.records: list = []

    def wait_for(self, match: Callable[[list], object], timeout: float, what: str) -> object:
        deadline = time.monotonic() + timeout
        while True:
            found = match(self.records)
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            for batch in self.consumer.poll(timeout_ms=200).values():
                self.records.extend(batch)

    def close(self) -> None:
        self.consumer.close()


def decisions_of(records: list, study_id: str) -> list[tuple[events_pb2.Decision, dict]]:
    out = []
    for record in records:
        if not record.topic.endswith("decisions"):
            continue
        decision = events_pb2.Decision()
        try:  # other tests publish garbage on the shared topics on purpose
            decision.ParseFromString(record.value)
        except DecodeError:
            continue
        if decision.study_id == study_id:
            out.append((decision, dict(record.headers or [])))
    return out


def dead_letters(records: list) -> list[events_pb2.DeadLetter]:
    out = []
    for record in records:
        if record.topic.endswith("dead-letter"):
            letter = events_pb2.DeadLetter()
            try:  # other tests publish garbage on the shared topics on purpose
                letter.ParseFromString(record.value)
            except DecodeError:
                continue
            out.append(letter)
    return out


def publish_study(settings: Settings, study_id: str) -> None:
    config = study_pb2.StudyConfig(
        name="earlystop-it",
        metric="val_loss",
        direction=study_pb2.MINIMIZE,
        scheduler=study_pb2.SchedulerConfig(
            kind=study_pb2.ASHA, min_resource=1, max_resource=9, reduction_factor=3,
            min_population=3,
        ),
    )
    event = events_pb2.StudyEvent(
        study=study_pb2.Study(study_id=study_id, config=config, state=study_pb2.STUDY_ACTIVE),
        ts_ms=int(time.time() * 1000),
    )
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    value, topic = event.SerializeToString(), settings.topics.studies
    producer.send(
        topic, key=study_id.encode(), value=value,
        headers=signed_headers(topic, study_id.encode(), value),  # as suggest signs it
    )
    producer.flush(10)
    producer.close()


def test_asha_stops_the_worse_trials_and_survives_garbage(
    infra: Settings, start_service: Callable
) -> None:
    service = start_service(
        "services.earlystop", {"LADDER_EARLYSTOP_UNKNOWN_STUDY_WAIT": "2", **SYNTHETIC_TRIALS}
    )
    topics = infra.topics
    study_id = f"es-{uuid.uuid4().hex[:8]}"
    tail = Tail(infra, [topics.decisions, topics.dead_letter])
    producer = KafkaProducer(bootstrap_servers=infra.kafka_bootstrap, linger_ms=0)

    def report(trial: str, step: int, value: float | str, headers: list | None = None) -> None:
        body = {
            "study_id": study_id, "trial_id": trial, "step": step, "value": value,
            "metric": "val_loss", "worker_id": "it-worker", "ts_ms": int(time.time() * 1000),
        }
        producer.send(
            topics.metrics, key=trial.encode(), value=json.dumps(body).encode(),
            headers=headers or [],
        )
        producer.flush(10)

    def decision_for(trial: str, rung: int) -> Callable[[list], object]:
        return lambda records: [
            d for d, _ in decisions_of(records, study_id) if d.trial_id == trial and d.rung == rung
        ]

    try:
        publish_study(infra, study_id)
        # Trials 0..8 from best to worst. Each reaches rung 0 (1 step) in turn, so the
        # asynchronous ASHA outcome is deterministic: 0 and 1 arrive while the rung has
        # fewer than min_population trials, every later one ranks last of n and is out.
        trials = [f"{study_id}-t{i}" for i in range(9)]
        for i, trial in enumerate(trials):
            report(trial, 1, round(0.30 + 0.05 * i, 3))
            tail.wait_for(decision_for(trial, 0), 30, f"rung 0 decision of {trial}")
        # The two survivors go on through rung 1 (3 steps) to the full budget.
        for step in range(2, 10):
            for trial in trials[:2]:
                report(trial, step, round(0.30 + 0.05 * trials.index(trial) - 0.01 * step, 3))
        tail.wait_for(decision_for(trials[1], 1), 30, "rung 1 decision of the runner-up")

        decisions = [d for d, _ in decisions_of(tail.records, study_id)]
        stops = {d.trial_id: d for d in decisions if d.action == events_pb2.STOP}
        assert set(stops) == set(trials[2:])
        assert all(d.action == events_pb2.CONTINUE for d in decisions if d.trial_id in trials[:2])
        worst = stops[trials[8]]
        assert (worst.rung, worst.resource, worst.rank, worst.population) == (0, 1, 9, 9)
        assert worst.cutoff == pytest.approx(0.40)  # 3rd best of 9 at rung 0
        assert worst.smoothed_value == pytest.approx(0.70)
        assert worst.reason == (
            "rung 0 (1 step): rank 9/9, val_loss 0.7 > cutoff 0.4 (top 3 of 9 kept, eta=3)"
        )
        assert worst.scheduler == "asha" and worst.report_ts_ms > 0
        third = stops[trials[2]]
        assert (third.rank, third.population) == (3, 3)
        first_at_rung0 = next(d for d in decisions if d.trial_id == trials[0] and d.rung == 0)
        assert "population 1 < min 3" in first_at_rung0.reason
        # Each rung crossing was decided once, even though reports kept coming.
        keys = [(d.trial_id, d.rung) for d in decisions]
        assert len(keys) == len(set(keys))

        # Garbage on the metrics topic goes to dead-letter with its reason; the report
        # published right after it is still processed. It carries a W3C traceparent, which
        # must come out on the decision: one trace from metric to decision.
        garbage = b"\x08\x96\x01garbage\xff\xfe not a metric report"
        producer.send(topics.metrics, key=b"somebody", value=garbage)
        late = f"{study_id}-late"
        traceparent = f"00-{TRACE_ID}-00f067aa0ba902b7-01".encode()
        report(late, 2, 0.10, headers=[("traceparent", traceparent)])
        letter = tail.wait_for(
            lambda records: [d for d in dead_letters(records) if d.payload == garbage],
            30, "dead-letter record of the garbage",
        )[0]
        assert letter.source_topic == topics.metrics
        assert letter.service == "earlystop"
        assert "MetricReport" in letter.reason
        late_decision = tail.wait_for(decision_for(late, 0), 30, "decision after the garbage")[0]
        assert late_decision.action == events_pb2.CONTINUE and late_decision.rank == 1
        headers = next(h for d, h in decisions_of(tail.records, study_id) if d.trial_id == late)
        assert TRACE_ID in headers["traceparent"].decode()

        # A diverged run is stopped at once; a metric of a study nobody published is
        # dead-lettered once the (here 2 s) wait for its StudyEvent is over.
        report(f"{study_id}-nan", 1, "nan")
        diverged = tail.wait_for(decision_for(f"{study_id}-nan", 0), 30, "divergence stop")[0]
        assert diverged.action == events_pb2.STOP and diverged.reason.startswith("diverged")
        ghost = f"ghost-{uuid.uuid4().hex[:6]}"
        producer.send(
            topics.metrics, key=b"g",
            value=json.dumps({"study_id": ghost, "trial_id": "g", "step": 1, "value": 1}).encode(),
        )
        producer.flush(10)
        unknown = tail.wait_for(
            lambda records: [d for d in dead_letters(records) if ghost.encode() in d.payload],
            30, "dead-letter of the unknown study",
        )[0]
        assert unknown.reason.startswith(f"unknown study '{ghost}'")
    finally:
        producer.close()
        tail.close()

    started = time.monotonic()
    assert service.stop() == 0
    assert time.monotonic() - started < 15
    log = service.log_text()
    assert '"level": "error"' not in log, log[-3000:]


def test_every_process_knows_a_study_published_after_a_second_one_joined(
    infra: Settings, start_service: Callable, tmp_path: Path
) -> None:
    """Stage 1 is partitioned by trial, so both processes see the new study's metrics:
    each must have the study (every process reads the studies topic itself), and a
    malformed StudyEvent still gets a single dead letter (the studies agent validates
    it in the group)."""

    def process(name: str) -> object:
        return start_service(
            "services.earlystop",
            {
                **SYNTHETIC_TRIALS,
                "LADDER_EARLYSTOP_UNKNOWN_STUDY_WAIT": "5",
                "LADDER_EARLYSTOP_DATA_DIR": str(tmp_path / name),
            },
        )

    topics = infra.topics
    first = process("first")
    second = process("second")
    study_id = f"es2-{uuid.uuid4().hex[:8]}"
    tail = Tail(infra, [topics.decisions, topics.dead_letter])
    producer = KafkaProducer(bootstrap_servers=infra.kafka_bootstrap, linger_ms=0)
    try:
        publish_study(infra, study_id)
        trials = [f"{study_id}-t{i}" for i in range(16)]  # spread over the partitions
        for i, trial in enumerate(trials):
            body = {"study_id": study_id, "trial_id": trial, "step": 1, "value": 0.1 * i}
            producer.send(topics.metrics, key=trial.encode(), value=json.dumps(body).encode())
        producer.flush(10)
        tail.wait_for(
            lambda records: {d.trial_id for d, _ in decisions_of(records, study_id)}
            == set(trials),
            60,
            "a rung-0 decision for every trial",
        )
        assert not [d for d in dead_letters(tail.records) if study_id.encode() in d.payload]
        for service in (first, second):
            assert f"study {study_id} registered" in service.log_text()  # type: ignore[attr-defined]

        garbage = b"\xff\xfe not a StudyEvent " + uuid.uuid4().hex.encode()
        sentinel = b"\xff\xfe sentinel " + uuid.uuid4().hex.encode()
        for payload in (garbage, sentinel):  # one key: one partition, one owner, in order
            producer.send(topics.studies, key=b"junk-" + study_id.encode(), value=payload)
        producer.flush(10)
        tail.wait_for(
            lambda records: [d for d in dead_letters(records) if d.payload == sentinel],
            30,
            "dead letter of the second malformed StudyEvent",
        )
        letters = [d for d in dead_letters(tail.records) if d.payload == garbage]
        assert len(letters) == 1 and letters[0].source_topic == topics.studies
    finally:
        producer.close()
        tail.close()
