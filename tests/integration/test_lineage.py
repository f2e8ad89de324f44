"""The lineage service as a real process against the real broker, on each store engine
(SQLite file, PostgreSQL URL): it records a trial's whole history from every topic,
answers the lineage queries, ignores replayed records, resumes exactly where it
stopped after a restart, and keeps each attempt's run environment from the real
evaluate's TRIAL_STARTED events. A store URL it cannot use stops it at start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from ladder.bus import EventProducer
from ladder.config import Settings
from ladder.params import fill_params
from ladder.testing import Clients, signed_headers, unless_not_found, wait_for
from ladder.v1 import (
    evaluate_pb2,
    events_pb2,
    lineage_pb2,
    lineage_pb2_grpc,
    study_pb2,
    trial_pb2,
)

pytestmark = pytest.mark.integration

TS = trial_pb2.TrialState
KIND = events_pb2.TrialEventKind
SENTINEL_DATASET = "sentinel-dataset"


def lineage_or_none(
    stub: lineage_pb2_grpc.LineageServiceStub, trial_id: str
) -> lineage_pb2.TrialLineage | None:
    request = lineage_pb2.GetTrialLineageRequest(trial_id=trial_id)
    return unless_not_found(lambda: stub.GetTrialLineage(request, timeout=5))


class Scenario:
    """One study, one trial, its whole history; ids unique per test."""

    def __init__(self, settings: Settings) -> None:
        tag = uuid.uuid4().hex[:8]
        self.settings = settings
        self.topics = settings.topics
        self.study_id = f"study-{tag}"
        self.trial_id = f"trial-{tag}"
        self.attempt_id = f"{self.trial_id}-a1"

    def study(self) -> events_pb2.StudyEvent:
        config = study_pb2.StudyConfig(
            name="lineage-it",
            direction=study_pb2.MAXIMIZE,
            metric="val_accuracy",
            dataset_id="digits@sklearn-1.9",
            code_commit="0123abcd",
        )
        study = study_pb2.Study(study_id=self.study_id, config=config, state=study_pb2.STUDY_ACTIVE)
        return events_pb2.StudyEvent(study=study, ts_ms=1_000)

    def trial_event(
        self, kind: str, state: str, ts_ms: int, **fields: Any
    ) -> events_pb2.TrialEvent:
        started = kind != "TRIAL_SUGGESTED"
        trial = trial_pb2.Trial(
            trial_id=self.trial_id,
            study_id=self.study_id,
            state=TS.Value(state),
            seed=4242,
            attempt_id=self.attempt_id if started else "",
            attempt_number=1 if started else 0,
            worker_id="worker-3" if started else "",
        )
        fill_params(trial.params, {"lr": 0.003, "depth": 4, "optimizer": "adam"})
        if kind == "TRIAL_COMPLETED":
            trial.has_final_value = True
            trial.final_value = 0.93
            trial.checkpoint_uri = f"file:///ckpt/{self.trial_id}/3"
            trial.checkpoint_step = 3
        return events_pb2.TrialEvent(kind=KIND.Value(kind), trial=trial, ts_ms=ts_ms, **fields)

    def trial_events(self) -> list[events_pb2.TrialEvent]:
        return [
            self.trial_event(
                "TRIAL_SUGGESTED", "SUGGESTED", 1_100,
                algorithm="gp", predicted_mean=0.9, predicted_std=0.04,
            ),
            self.trial_event(
                "TRIAL_STARTED", "RUNNING", 1_200,
                hostname="gpu-host-1", environment="python=3.11 torch=2.13.0",
            ),
            self.trial_event("TRIAL_COMPLETED", "COMPLETED", 5_000),
        ]

    def metric(self, step: int, value: float) -> events_pb2.MetricReport:
        return events_pb2.MetricReport(
            study_id=self.study_id, trial_id=self.trial_id, attempt_id=self.attempt_id,
            worker_id="worker-3", metric="val_accuracy", step=step, value=value,
            ts_ms=2_000 + step,
        )

    def metric_json(self, step: int, value: float) -> bytes:
        # The documented JSON form other teams publish with plain Kafka clients.
        return json.dumps({
            "study_id": self.study_id, "trial_id": self.trial_id, "attempt_id": self.attempt_id,
            "worker_id": "worker-3", "metric": "val_accuracy", "step": step, "value": value,
            "ts_ms": 2_000 + step,
        }).encode()

    def decision(self) -> events_pb2.Decision:
        return events_pb2.Decision(
            study_id=self.study_id, trial_id=self.trial_id, action=events_pb2.PROMOTE,
            rung=1, resource=3, smoothed_value=0.9, cutoff=0.8, rank=1, population=3,
            reason="rung 1 (resource 3): rank 1 of 3, top 1/3 promoted", scheduler="asha",
            ts_ms=4_000, report_ts_ms=2_003,
        )

    def publish_all(self, producer: EventProducer, plain: KafkaProducer) -> None:
        producer.send(self.topics.studies, self.study_id, self.study(), wait=True)
        for event in self.trial_events():
            producer.send(self.topics.trials, self.study_id, event, wait=True)
        producer.send(self.topics.metrics, self.trial_id, self.metric(1, 0.71), wait=True)
        producer.send(self.topics.metrics, self.trial_id, self.metric(2, 0.85), wait=True)
        plain.send(
            self.topics.metrics, key=self.trial_id.encode(), value=self.metric_json(3, 0.93)
        ).get(timeout=30)
        producer.send(self.topics.decisions, self.trial_id, self.decision(), wait=True)

    def publish_sentinels(self, producer: EventProducer, tag: str) -> str:
        """Records of another study, on the same partitions (same keys) as the
        scenario's, one per topic it publishes to: once the sentinel trial is visible
        with its study's dataset, everything published before them on those
        partitions has been ingested."""
        sentinel = f"sentinel-{tag}-{uuid.uuid4().hex[:6]}"
        study = f"{sentinel}-study"
        config = study_pb2.StudyConfig(name=sentinel, dataset_id=SENTINEL_DATASET)
        producer.send(
            self.topics.studies,
            self.study_id,
            events_pb2.StudyEvent(
                study=study_pb2.Study(study_id=study, config=config), ts_ms=9_000
            ),
            wait=True,
        )
        event = events_pb2.TrialEvent(
            kind=events_pb2.TRIAL_SUGGESTED, ts_ms=9_000,
            trial=trial_pb2.Trial(trial_id=sentinel, study_id=study, state=TS.Value("SUGGESTED")),
        )
        producer.send(self.topics.trials, self.study_id, event, wait=True)
        producer.send(
            self.topics.metrics, self.trial_id,
            events_pb2.MetricReport(study_id=study, trial_id=sentinel, step=1, value=0.5),
            wait=True,
        )
        producer.send(
            self.topics.decisions, self.trial_id,
            events_pb2.Decision(study_id=study, trial_id=sentinel, action=events_pb2.CONTINUE),
            wait=True,
        )
        return sentinel


def is_complete(lineage: lineage_pb2.TrialLineage | None) -> bool:
    return bool(
        lineage is not None
        and lineage.state == "COMPLETED"
        and len(lineage.metrics) == 3
        and len(lineage.decisions) == 1
        and lineage.dataset_id
        and lineage.attempts
        and lineage.attempts[0].outcome == "completed"
    )


def sentinel_seen(stub: lineage_pb2_grpc.LineageServiceStub, sentinel: str) -> bool:
    lineage = lineage_or_none(stub, sentinel)
    return bool(
        lineage
        and lineage.state == "SUGGESTED"
        and lineage.metrics
        and lineage.decisions
        and lineage.dataset_id == SENTINEL_DATASET
    )


def find_dead_letter(
    settings: Settings, source_topic: str, partition: int, offset: int
) -> events_pb2.DeadLetter:
    """Lineage's dead letter for one source record (topic, partition and offset: an
    offset alone names a record on each partition)."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap.split(","), enable_auto_commit=False
    )
    try:
        partitions = [
            TopicPartition(settings.topics.dead_letter, p)
            for p in consumer.partitions_for_topic(settings.topics.dead_letter) or ()
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        found: list[events_pb2.DeadLetter] = []

        def poll() -> bool:
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    letter = events_pb2.DeadLetter.FromString(record.value)
                    source = (letter.source_topic, letter.source_partition, letter.source_offset)
                    if source == (source_topic, partition, offset) and letter.service == "lineage":
                        found.append(letter)
            return bool(found)

        wanted = f"lineage's dead letter for {source_topic}[{partition}]@{offset}"
        wait_for(poll, 30, wanted, every=0)
        return found[0]
    finally:
        consumer.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def lineage_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """LADDER_LINEAGE_DB for one test: a SQLite file, or an empty PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "lineage.sqlite3")
    return request.getfixturevalue("postgres").fresh_url("lineage_it")


def test_lineage_records_a_trial_end_to_end_exactly_once(
    infra: Settings, start_service: Callable[..., Any], lineage_db: str
) -> None:
    env = {"LADDER_LINEAGE_DB": lineage_db}
    service = start_service("services.lineage", env)
    scenario = Scenario(infra)
    producer = EventProducer(infra, "lineage-test")
    plain = KafkaProducer(bootstrap_servers=infra.kafka_bootstrap.split(","))
    channel = grpc.insecure_channel(service.addr)
    stub = lineage_pb2_grpc.LineageServiceStub(channel)
    try:
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetTrialLineage(
                lineage_pb2.GetTrialLineageRequest(trial_id=scenario.trial_id), timeout=5
            )
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert missing.value.details() == f"trial {scenario.trial_id!r} not found"

        # A record lineage cannot decode (signed: its producer is a trusted one):
        # dead-lettered with its reason, the service keeps going. (A bad metric is only
        # skipped: early-stop owns it.)
        garbage = b"\xff\xfe garbage"
        bad = plain.send(infra.topics.trials, key=b"x", value=garbage,
                         headers=signed_headers(infra.topics.trials, b"x", garbage))
        bad_record = bad.get(timeout=30)
        plain.send(infra.topics.metrics, key=b"x", value=b"{not json").get(timeout=30)

        scenario.publish_all(producer, plain)
        lineage = wait_for(
            lambda: (lin := lineage_or_none(stub, scenario.trial_id)) and is_complete(lin) and lin,
            60, "the complete lineage of the trial",
        )

        assert (lineage.study_id, lineage.seed, lineage.state) == (
            scenario.study_id, 4242, "COMPLETED",
        )
        assert lineage.params["lr"].float_value == 0.003
        assert lineage.params["depth"].int_value == 4
        assert lineage.params["optimizer"].str_value == "adam"
        assert (lineage.has_final_value, lineage.final_value) == (True, 0.93)
        assert (lineage.dataset_id, lineage.code_commit, lineage.metric) == (
            "digits@sklearn-1.9", "0123abcd", "val_accuracy",
        )
        assert (lineage.algorithm, lineage.predicted_mean, lineage.predicted_std) == (
            "gp", 0.9, 0.04,
        )
        assert lineage.checkpoint_uri == f"file:///ckpt/{scenario.trial_id}/3"
        [attempt] = lineage.attempts
        assert (attempt.attempt_id, attempt.attempt_number, attempt.worker_id) == (
            scenario.attempt_id, 1, "worker-3",
        )
        assert (attempt.hostname, attempt.environment) == (
            "gpu-host-1", "python=3.11 torch=2.13.0",
        )
        assert (attempt.outcome, attempt.started_ms, attempt.ended_ms) == (
            "completed", 1_200, 5_000,
        )
        assert attempt.checkpoint_uri == lineage.checkpoint_uri
        assert [(p.step, p.value, p.attempt_id) for p in lineage.metrics] == [
            (1, 0.71, scenario.attempt_id),
            (2, 0.85, scenario.attempt_id),
            (3, 0.93, scenario.attempt_id),  # the plain-JSON report
        ]
        assert list(lineage.decisions) == [scenario.decision()]

        best = stub.GetBestTrial(lineage_pb2.GetBestTrialRequest(study_id=scenario.study_id))
        assert best == lineage
        [listed] = stub.ListTrials(
            lineage_pb2.ListTrialsRequest(study_id=scenario.study_id)
        ).trials
        assert (listed.trial_id, listed.state, listed.final_value, listed.last_step) == (
            scenario.trial_id, "COMPLETED", 0.93, 3,
        )
        summary = stub.GetStudySummary(
            lineage_pb2.GetStudySummaryRequest(study_id=scenario.study_id)
        )
        assert (summary.completed, summary.suggested, summary.running) == (1, 0, 0)
        assert (summary.best_trial_id, summary.best_value) == (scenario.trial_id, 0.93)
        assert (summary.metric_points, summary.decisions) == (3, 1)
        with pytest.raises(grpc.RpcError) as unknown:
            stub.GetStudySummary(lineage_pb2.GetStudySummaryRequest(study_id="no-such-study"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as empty:
            stub.ListTrials(lineage_pb2.ListTrialsRequest())
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "study_id" in empty.value.details()

        letter = find_dead_letter(
            infra, infra.topics.trials, bad_record.partition, bad_record.offset
        )
        assert "TrialEvent" in letter.reason and letter.payload == b"\xff\xfe garbage"

        # Every record published again: nothing changes.
        scenario.publish_all(producer, plain)
        sentinel = scenario.publish_sentinels(producer, "replay")
        wait_for(lambda: sentinel_seen(stub, sentinel), 60, "the replay sentinel")
        assert lineage_or_none(stub, scenario.trial_id) == lineage
        assert stub.GetStudySummary(
            lineage_pb2.GetStudySummaryRequest(study_id=scenario.study_id)
        ) == summary

        # Restart on the same database: it resumes from its stored offsets, so
        # the second run applies only what was published while it was down.
        channel.close()
        assert service.stop() == 0
        assert "lineage stopped" in service.log_text()
        sentinel = scenario.publish_sentinels(producer, "restart")
        service = start_service("services.lineage", env)
        channel = grpc.insecure_channel(service.addr)
        stub = lineage_pb2_grpc.LineageServiceStub(channel)
        wait_for(lambda: sentinel_seen(stub, sentinel), 60, "the restart sentinel")
        assert lineage_or_none(stub, scenario.trial_id) == lineage
        channel.close()
        assert service.stop() == 0
        stopped = [
            json.loads(line) for line in service.log_text().splitlines()
            if '"lineage stopped' in line
        ]
        # The four sentinels (studies, trials, metrics, decisions) published while down.
        assert stopped and stopped[-1]["msg"].startswith("lineage stopped; 4 records applied")
    finally:
        channel.close()
        producer.close()
        plain.close()


def test_lineage_keeps_each_attempts_end_environment_and_checkpoint_overhead(
    infra: Settings, start_service: Callable[..., Any], lineage_db: str
) -> None:
    """Through the real services: a trial preempted once, failed once (counted), then
    completed; lineage answers how each attempt ended, what it ran with (the run
    environment its StartTrial sent) and what checkpoints cost."""
    lineage_service = start_service("services.lineage", {"LADDER_LINEAGE_DB": lineage_db})
    suggest = start_service("services.suggest")
    evaluate = start_service("services.evaluate")
    clients = Clients(suggest.addr, evaluate.addr)
    channel = grpc.insecure_channel(lineage_service.addr)
    stub = lineage_pb2_grpc.LineageServiceStub(channel)
    try:
        config = study_pb2.StudyConfig(name="ends", metric="loss", max_trials=1)
        config.space.parameters.add(name="x").float_range.high = 1.0
        config.scheduler.kind = study_pb2.NONE
        study_id = clients.create(config).study_id
        trial_id = clients.one(study_id).trial.trial_id

        def checkpoint(attempt: str, step: float, save: float, train: float) -> None:
            clients.evaluate.ReportCheckpoint(
                evaluate_pb2.ReportCheckpointRequest(
                    trial_id=trial_id, attempt_id=attempt, uri=f"file:///c/{step}", step=step,
                    save_seconds=save, train_seconds=train,
                ),
                timeout=30,
            )

        def fail(attempt: str, kind: int, reason: str) -> None:
            clients.evaluate.FailTrial(
                evaluate_pb2.FailTrialRequest(
                    trial_id=trial_id, attempt_id=attempt, reason=reason, kind=kind
                ),
                timeout=30,
            )

        def start(attempt: str, environment: trial_pb2.RunEnvironment) -> None:
            clients.evaluate.StartTrial(
                evaluate_pb2.StartTrialRequest(
                    trial_id=trial_id, attempt_id=attempt, worker_id="w-1",
                    hostname=environment.hostname, run_environment=environment,
                ),
                timeout=30,
            )

        packages = ["numpy==2.4.6", "torch==2.13.0"]
        environments = [
            trial_pb2.RunEnvironment(
                python="3.11.7", os="linux-6.1.0-x86_64", hostname=host, cpu_model="EPYC",
                cpu_count=8, gpu_model="NVIDIA L4", gpu_count=1, code_commit="0123abcd",
                packages_hash="sha256-of-the-list", packages=packages, dataset_id="digits@1",
                entry_point="python train.py",
            )
            for host in ("gpu-host-1", "gpu-host-2")
        ]
        start("a1", environments[0])
        checkpoint("a1", 1, 0.5, 20)
        fail("a1", trial_pb2.PREEMPTED, "SIGTERM")
        start("a2", environments[1])
        checkpoint("a2", 2, 0.25, 10)
        fail("a2", trial_pb2.INFRASTRUCTURE, "NCCL timeout")
        clients.start(trial_id, "a3")
        clients.complete(trial_id, "a3", 0.5)

        lineage = wait_for(
            lambda: (lin := lineage_or_none(stub, trial_id))
            and lin.state == "COMPLETED"
            and len(lin.attempts) == 3
            and lin.attempts[-1].outcome == "completed"
            and lin,
            60,
            "the lineage of the interrupted trial",
        )
        assert [
            (a.attempt_id, a.outcome, a.attempt_end, a.failure_kind) for a in lineage.attempts
        ] == [
            ("a1", "preempted", trial_pb2.ATTEMPT_PREEMPTED, trial_pb2.PREEMPTED),
            ("a2", "failed", trial_pb2.ATTEMPT_FAILED, trial_pb2.INFRASTRUCTURE),
            ("a3", "completed", trial_pb2.ATTEMPT_COMPLETED, 0),
        ]
        assert [a.end_reason for a in lineage.attempts] == [
            "preempted: SIGTERM; not counted (0 of 3 failures used)",
            "attempt 2 failed (INFRASTRUCTURE, retried; 1 of 3 failures used): NCCL timeout",
            "completed with value 0.5",
        ]
        assert all(a.ended_ms >= a.started_ms > 0 for a in lineage.attempts)
        # clients.start sends no run environment: a3 has none.
        assert [a.run_environment for a in lineage.attempts[:2]] == environments
        assert [a.hostname for a in lineage.attempts] == ["gpu-host-1", "gpu-host-2", "it-host"]
        assert not lineage.attempts[2].HasField("run_environment")
        assert (lineage.failures, lineage.failure_kind) == (1, trial_pb2.INFRASTRUCTURE)
        assert (lineage.checkpoint_seconds, lineage.train_seconds) == (0.75, 30)
        summary = stub.GetStudySummary(lineage_pb2.GetStudySummaryRequest(study_id=study_id))
        assert (summary.checkpoint_seconds, summary.train_seconds) == (0.75, 30)
    finally:
        channel.close()
        clients.close()


@pytest.mark.parametrize(
    ("store", "status", "message"),
    [
        # Once silently a SQLite file under a folder named "postgresql:".
        ("postgresql:/lineage", 2, "use a file path or sqlite:///PATH (SQLite), or postgresql://"),
        ("mysql://ladder@127.0.0.1/lineage", 2, "unsupported lineage store 'mysql://"),
        # A PostgreSQL URL nobody answers: a clear error, no retry loop at start-up.
        ("postgresql://ladder:pw@127.0.0.1:1/lineage?connect_timeout=2", 1,
         "cannot open the lineage store at postgresql://ladder:***@127.0.0.1:1/lineage"),
    ],
)
def test_a_store_it_cannot_use_stops_it_at_start_up(
    tmp_path: Path, store: str, status: int, message: str
) -> None:
    env = {**os.environ, "LADDER_LINEAGE_DB": store, "LADDER_STATE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "services.lineage", "--port", "0"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == status, done.stderr
    assert message in done.stderr + done.stdout
    assert "pw@" not in done.stderr + done.stdout
    assert list(tmp_path.iterdir()) == []  # no file, no folder named after the URL
