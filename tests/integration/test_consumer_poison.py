"""Poison records never stop a partition (ladder.bus.ConsumerLoop, lineage): a bad
record is dead-lettered with its reason and the records after it are handled; a record
held by an outage holds its own partition only, and makes health say so."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from ladder.bus import ConsumerLoop, EventProducer, Record
from ladder.config import Settings
from ladder.poison import PoisonPolicy
from ladder.testing import decoded, read_topic, unless_not_found, wait_for
from ladder.v1 import events_pb2, lineage_pb2, lineage_pb2_grpc, trial_pb2
from test_bus import new_topic

pytestmark = pytest.mark.integration


def dead_letters(settings: Settings, topic: str) -> list[events_pb2.DeadLetter]:
    letters = decoded(events_pb2.DeadLetter, read_topic(settings, settings.topics.dead_letter))
    return [letter for letter in letters if letter.source_topic == topic]


def test_a_poison_record_is_dead_lettered_and_an_outage_holds_only_its_partition(
    infra: Settings,
) -> None:
    poisoned, held = new_topic(infra), new_topic(infra)
    producer = EventProducer(infra, "poison-test")
    redis_back = threading.Event()
    handled: list[tuple[str, int]] = []
    health: list[str | None] = []

    def handler(record: Record) -> None:
        if record.topic == poisoned and record.value == b"poison":
            raise KeyError("a bug this record meets")
        if record.topic == held and not redis_back.is_set():
            raise redis.ConnectionError("Redis away")
        handled.append((record.topic, record.offset))

    for topic, values in ((poisoned, [b"poison", b"ok-1", b"ok-2"]), (held, [b"ok-0"])):
        for value in values:
            producer.send(topic, "k", value, wait=True)
    loop = ConsumerLoop(
        infra, "poison-test", [poisoned, held], handler, producer, group_id=None,
        on_health=health.append, policy=PoisonPolicy(max_attempts=3, stuck_after_s=1.0),
    ).start()
    try:
        # The poison record goes after 3 attempts; its partition moves on while the
        # other topic's record waits for Redis.
        wait_for(lambda: handled == [(poisoned, 1), (poisoned, 2)], 20, "records after poison")
        [letter] = wait_for(lambda: dead_letters(infra, poisoned), 20, "the dead letter")
        assert (letter.source_partition, letter.source_offset, letter.payload) == (0, 0, b"poison")
        assert "failed 3 times" in letter.reason and "KeyError" in letter.reason
        reason = wait_for(
            lambda: (stuck := loop.stuck) and f"('{held}', 0)@0" in stuck and stuck,
            10, "the consumer stuck on the held record",
        )
        assert "ConnectionError: Redis away" in reason
        assert health and health[0] is not None  # told once, when it got stuck
        assert (held, 0) not in handled
        redis_back.set()
        wait_for(lambda: (held, 0) in handled, 15, "the held record after the outage")
        wait_for(lambda: health[-1] is None, 10, "health back to SERVING")
        assert dead_letters(infra, held) == [] and handled.count((held, 0)) == 1
    finally:
        loop.stop()
        producer.close()


def test_lineage_moves_past_poison_on_the_metrics_and_trials_topics(
    infra: Settings, start_service: Callable[..., Any], tmp_path: Path
) -> None:
    service = start_service(
        "services.lineage", {"LADDER_LINEAGE_DB": str(tmp_path / "lineage.sqlite3")}
    )
    tag = uuid.uuid4().hex[:8]
    study_id, trial_id = f"study-{tag}", f"trial-{tag}"
    topics = infra.topics
    producer = EventProducer(infra, "poison-test")
    stub = lineage_pb2_grpc.LineageServiceStub(grpc.insecure_channel(service.addr))
    metric = {"study_id": study_id, "trial_id": trial_id, "step": 1, "value": 0.5}
    try:
        # Decodes as JSON but not as a MetricReport (ts_ms beyond int64): once it kept
        # lineage retrying it for ever, every topic stalled behind it.
        producer.send(
            topics.metrics, trial_id, json.dumps({**metric, "ts_ms": 2**63}).encode(), wait=True
        )
        producer.send(topics.metrics, trial_id, json.dumps(metric).encode(), wait=True)
        bad_kind = events_pb2.TrialEvent(kind=99, trial=trial_pb2.Trial(trial_id=trial_id))
        bad_kind.trial.study_id = study_id
        poison = producer.send(topics.trials, study_id, bad_kind, wait=True).get(5)
        suggested = events_pb2.TrialEvent(
            kind=events_pb2.TRIAL_SUGGESTED,
            trial=trial_pb2.Trial(
                trial_id=trial_id, study_id=study_id, state=trial_pb2.SUGGESTED
            ),
            ts_ms=1_000,
        )
        producer.send(topics.trials, study_id, suggested, wait=True)

        request = lineage_pb2.GetTrialLineageRequest(trial_id=trial_id)
        lineage = wait_for(
            lambda: (lin := unless_not_found(lambda: stub.GetTrialLineage(request, timeout=5)))
            and lin.metrics and lin.state == "SUGGESTED" and lin,
            20, "the valid trial event and metric after the poison ones",
        )
        assert lineage.state == "SUGGESTED" and [(p.step, p.value) for p in lineage.metrics] == [
            (1, 0.5)
        ]
        letters = wait_for(
            lambda: [
                letter for letter in dead_letters(infra, topics.trials)
                if letter.source_offset == poison.offset() and letter.service == "lineage"
            ],
            20, "lineage's dead letter of the poison trial event",
        )
        assert "has no value 99" in letters[0].reason
        assert letters[0].payload == bad_kind.SerializeToString()
    finally:
        producer.close()
