"""Early-stop while the durable broker's object store is killed (kill -9) and comes back.

tansu on S3 answers a produce it cannot store with UNKNOWN_SERVER_ERROR, which aiokafka
hands back as ``UnknownError``, a Kafka error it does not call retriable. Early-stop must
take that for the outage it is: every report the broker acknowledged gets its decision
once the store is back, and no good record is dead-lettered. (The chaos run of 09:48 in
bench/README.md lost a decision there: one dead letter whose payload was no malformed
record, during the object store's kill.)

The reports are published as one burst before the kill, so early-stop has read them and
is producing their crossings and decisions when the store dies; the test checks from
early-stop's log that a produce did meet the outage, so it cannot pass without it.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from ladder.config import Settings, Topics
from ladder.stack import launcher, procs
from ladder.stack.procs import ProcRecord
from ladder.testing import ServiceGroup, TopicReader, decoded, read_topic, wait_for
from ladder.v1 import events_pb2
from test_earlystop import SYNTHETIC_TRIALS, publish_study

pytestmark = pytest.mark.integration

TRIALS = 3000  # each reports step 1 once: one rung-0 crossing and one decision per trial


@pytest.fixture
def durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """SeaweedFS, tansu on S3 and Redis (no services) in a state folder of their own."""
    for var in ("LADDER_KAFKA_BOOTSTRAP", "LADDER_REDIS_URL", "LADDER_BROKER_PROFILE",
                "LADDER_S3_ENDPOINT", "LADDER_CHECKPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LADDER_BROKER_STORAGE", "s3")
    monkeypatch.setenv("LADDER_TOPIC_PREFIX", f"so{uuid.uuid4().hex[:6]}.")
    monkeypatch.setenv("LADDER_STATE_DIR", str(tmp_path / "state"))
    try:
        yield launcher.up(tmp_path / "state", services=False)
    finally:
        launcher.down(tmp_path / "state")


def kill9(info: dict[str, Any], name: str) -> None:
    rec = ProcRecord.from_json(name, info["pids"][name])
    os.killpg(rec.pid, signal.SIGKILL)
    wait_for(lambda: not procs.is_running(rec), 10, f"{name} gone")


def test_no_decision_is_lost_when_the_object_store_dies_under_early_stop(
    durable: dict[str, Any], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    settings = Settings(
        kafka_bootstrap=durable["kafka_bootstrap"],
        redis_url=durable["redis_url"],
        topics=Topics(os.environ["LADDER_TOPIC_PREFIX"]),
        state_dir=state,
    )
    env = {**os.environ, "LADDER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "LADDER_REDIS_URL": settings.redis_url}
    group = ServiceGroup(env, tmp_path)
    earlystop = group.start(
        "services.earlystop", {"LADDER_EARLYSTOP_UNKNOWN_STUDY_WAIT": "60", **SYNTHETIC_TRIALS}
    )
    study_id = f"so-{uuid.uuid4().hex[:8]}"
    trials = [f"{study_id}-t{i}" for i in range(TRIALS)]
    try:
        publish_study(settings, study_id)
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
        for i, trial in enumerate(trials):
            body = {"study_id": study_id, "trial_id": trial, "step": 1,
                    "value": round(0.1 + (i * 7919 % TRIALS) / TRIALS, 6)}
            producer.send(settings.topics.metrics, key=trial.encode(),
                          value=json.dumps(body).encode())
        producer.flush(60)
        producer.close()

        decisions = TopicReader(settings, settings.topics.decisions)
        try:
            # Killed at the first decision: early-stop is busy with the rest.
            wait_for(lambda: mine(decisions.poll(), study_id), 120, "the first decision")
            kill9(durable, "objectstore")
        finally:
            decisions.close()
        wait_for(lambda: "UnknownError" in earlystop.log_text(), 30,
                 "a produce of early-stop refused while the object store is away")
        restarted = launcher.up(state, services=False)
        assert "objectstore" in restarted["restarted"]

        def outcome() -> tuple[set[str], list[events_pb2.DeadLetter]] | None:
            decided = {d.trial_id for d in mine(
                read_topic(settings, settings.topics.decisions, 60), study_id)}
            letters = [d for d in decoded(events_pb2.DeadLetter, read_topic(
                settings, settings.topics.dead_letter, 60)) if study_id.encode() in d.payload]
            return (decided, letters) if decided >= set(trials) or letters else None

        decided, letters = wait_for(outcome, 180, "a decision for every trial, or a dead letter")
        assert letters == [], [(d.source_topic, d.reason[:120]) for d in letters[:5]]
        assert decided == set(trials)
        assert earlystop.proc.poll() is None
    finally:
        group.stop_all()


def mine(records: list[Any], study_id: str) -> list[events_pb2.Decision]:
    return [d for d in decoded(events_pb2.Decision, records) if d.study_id == study_id]
