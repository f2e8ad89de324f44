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
from ladder.client import wait_until
from ladder.config import Settings
from ladder.stack import launcher, procs
from ladder.stack.procs import ProcRecord
from ladder.testing import ServiceGroup, ServiceProcess, TopicReader, decoded, read_topic, wait_for
from ladder.v1 import events_pb2
from test_earlystop import SYNTHETIC_TRIALS, publish_study

pytestmark = pytest.mark.integration

TRIALS = 3000  # each reports step 1 once: one rung-0 crossing and one decision per trial
DECIDED_WITHIN_S = 180  # after the object store is back


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


def test_the_topic_reader_reads_every_record_after_a_broker_restart(
    durable: dict[str, Any], tmp_path: Path
) -> None:
    """The test below reads the topics of a restarted broker, whose ListOffsets answers
    are short (tansu 0.6: 1 for a partition not written since the restart): a reader
    trusting them stopped after its first poll of each partition (500 records)."""
    state = tmp_path / "state"
    settings = Settings.from_env()  # the fixture's stack.json
    topic = settings.topics.metrics
    reader = TopicReader(settings, topic)
    partitions = len(reader.partitions)
    reader.close()
    marker = uuid.uuid4().hex.encode()
    sent = 800 * partitions  # more than one poll's worth in every partition
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
    for i in range(sent):
        producer.send(topic, value=marker + b"-%d" % i, partition=i % partitions)
    producer.flush(60)
    producer.close()

    kill9(durable, "kafka")
    assert "kafka" in launcher.up(state, services=False)["restarted"]

    read = [r.value for r in read_topic(settings, topic, 60) if r.value.startswith(marker)]
    assert len(read) == len(set(read)) == sent


def test_no_decision_is_lost_when_the_object_store_dies_under_early_stop(
    durable: dict[str, Any], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    settings = Settings.from_env()  # the fixture's stack.json
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

        found = wait_until(outcome, DECIDED_WITHIN_S, 0.5)
        if not found:
            raise AssertionError(stalled(settings, study_id, trials, earlystop))
        decided, letters = found
        assert letters == [], [(d.source_topic, d.reason[:120]) for d in letters[:5]]
        assert decided == set(trials)
        assert earlystop.proc.poll() is None
    finally:
        group.stop_all()


def stalled(
    settings: Settings, study_id: str, trials: list[str], earlystop: ServiceProcess
) -> str:
    """What a timed-out wait saw: which trials lack a decision, and whether their report
    and rung crossing are still on the broker (a broker that lost an acknowledged record
    is another failure than an early-stop that stopped deciding)."""
    decided = {d.trial_id for d in mine(read_topic(settings, settings.topics.decisions, 60),
                                        study_id)}
    missing = sorted(set(trials) - decided)
    reported = {json.loads(r.value).get("trial_id") for r in read_topic(
        settings, settings.topics.metrics, 60) if study_id.encode() in r.value}
    crossed = {c.trial_id for c in decoded(events_pb2.RungCrossing, read_topic(
        settings, settings.topics.rungs, 60)) if c.study_id == study_id}
    lines = [line for line in earlystop.log_text().splitlines()
             if '"logger": "aiokafka' not in line]
    logged = sum(f'"msg": "{verdict} {study_id}-' in line for line in lines
                 for verdict in ("CONTINUE", "STOP"))
    exit_code = earlystop.proc.poll()
    return (
        f"no decision on the topic for {len(missing)} of {len(trials)} trials within "
        f"{DECIDED_WITHIN_S} s (e.g. {missing[:5]}); of those, {len(set(missing) & reported)} "
        f"have their report on the metrics topic and {len(set(missing) & crossed)} a rung "
        f"crossing; early-stop logged {logged} decisions and is "
        f"{'running' if exit_code is None else f'exited {exit_code}'}; its last log lines:\n"
        + "\n".join(line[:300] for line in lines[-25:])
    )


def mine(records: list[Any], study_id: str) -> list[events_pb2.Decision]:
    return [d for d in decoded(events_pb2.Decision, records) if d.study_id == study_id]
