"""The whole system: the four services as processes on the real broker and Redis.

Another team's service publishes metric reports with a plain kafka-python producer in
the documented JSON form (no Ladder code on the sending side); the early-stop service
decides, the STOP reaches the worker through its heartbeat, and lineage records it all.
Garbage on the metrics topic is dead-lettered with a reason and processing goes on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaProducer
from ladder.client import LadderClient
from ladder.config import Settings
from ladder.testing import TopicReader, decoded, unless_not_found, wait_for
from ladder.v1 import events_pb2

pytestmark = pytest.mark.integration

SERVICES = ("services.suggest", "services.evaluate", "services.lineage", "services.earlystop")


@pytest.fixture(scope="module")
def system(infra: Settings, start_module_service: Callable[..., Any]) -> dict[str, Any]:
    procs = {module: start_module_service(module) for module in SERVICES}
    settings = Settings(
        kafka_bootstrap=infra.kafka_bootstrap,
        redis_url=infra.redis_url,
        topics=infra.topics,
        suggest_addr=procs["services.suggest"].addr,
        evaluate_addr=procs["services.evaluate"].addr,
        lineage_addr=procs["services.lineage"].addr,
        state_dir=infra.state_dir,
    )
    return {"settings": settings, "procs": procs}


def test_plain_json_metrics_drive_decisions_heartbeats_and_lineage(system: dict) -> None:
    settings: Settings = system["settings"]
    client = LadderClient(settings)
    study = client.create_study(
        {
            "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
            "name": "e2e",
            "scheduler": {
                "kind": "asha",
                "min_resource": 1,
                "max_resource": 9,
                "reduction_factor": 3,
                "min_population": 3,
                "smoothing": "none",
            },
            "dataset_id": "ds-e2e",
            "code_commit": "abc123",
            "seed": 5,
        }
    )
    sid = study.study_id
    trials = []
    for i in range(6):
        suggestion = client.suggest(sid, f"w{i}")[0]
        attempt = f"a-{uuid.uuid4().hex[:8]}"
        client.start_trial(suggestion.trial.trial_id, f"w{i}", attempt)
        trials.append((suggestion.trial.trial_id, attempt))

    # Reports of different trials travel on different partitions, so arrival order is
    # not publish order: the worst trial is published once the others were judged.
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    decisions = TopicReader(settings, settings.topics.decisions)

    def publish(tid: str, attempt: str, value: float) -> None:
        payload = {
            "study_id": sid, "trial_id": tid, "step": 1, "value": value,
            "metric": "val_loss", "attempt_id": attempt,
        }
        producer.send(settings.topics.metrics, key=tid.encode(), value=json.dumps(payload).encode())
        producer.flush()

    def decided() -> dict[str, events_pb2.Decision]:
        found = decoded(events_pb2.Decision, decisions.poll())
        return {d.trial_id: d for d in found if d.study_id == sid}

    for (tid, attempt), value in zip(trials[:-1], [0.10, 0.20, 0.30, 0.70, 0.80], strict=True):
        publish(tid, attempt, value)
    wait_for(lambda: len(decided()) >= 5, 60, "decisions for the first five trials")
    publish(*trials[-1], 0.90)

    worst_tid, worst_attempt = trials[-1]
    best_tid, best_attempt = trials[0]

    # The STOP reaches the worker through its next heartbeat.
    stop = wait_for(
        lambda: (r := client.heartbeat(worst_tid, worst_attempt, 1)).action == events_pb2.STOP
        and r,
        60,
        "STOP on the worst trial's heartbeat",
    )
    assert stop.decision.rung == 0 and stop.decision.population >= 3
    assert stop.decision.reason, "a STOP carries its reason"
    assert client.heartbeat(best_tid, best_attempt, 1).action == events_pb2.CONTINUE

    stops = wait_for(
        lambda: {t for t, d in decided().items() if d.action == events_pb2.STOP},
        30,
        "STOP decisions on the decisions topic",
    )
    assert worst_tid in stops and best_tid not in stops

    lineage = wait_for(
        lambda: (lin := unless_not_found(lambda: client.lineage(worst_tid)))
        and lin.metrics
        and lin.decisions
        and lin.attempts  # each topic reaches lineage on its own schedule
        and lin,
        60,
        "lineage with the metric point, the decision and the attempt",
    )
    assert [(p.step, p.value) for p in lineage.metrics] == [(1.0, 0.90)]
    assert any(d.action == events_pb2.STOP for d in lineage.decisions)
    assert lineage.dataset_id == "ds-e2e" and lineage.code_commit == "abc123"
    assert lineage.attempts and lineage.attempts[0].worker_id == "w5"
    assert "x" in lineage.params

    # Garbage lands in dead-letter with a reason; the next valid report is processed.
    producer.send(settings.topics.metrics, key=b"junk", value=b"\x00\xffnot a metric\x13")
    late = client.suggest(sid, "w-late")[0]
    late_attempt = "a-late"
    client.start_trial(late.trial.trial_id, "w-late", late_attempt)
    producer.send(
        settings.topics.metrics,
        key=late.trial.trial_id.encode(),
        value=json.dumps(
            {"study_id": sid, "trial_id": late.trial.trial_id, "step": 1, "value": 5.0}
        ).encode(),
    )
    producer.flush()
    dead = TopicReader(settings, settings.topics.dead_letter)
    letter = wait_for(
        lambda: next(
            (
                d
                for d in decoded(events_pb2.DeadLetter, dead.poll())
                if d.payload == b"\x00\xffnot a metric\x13"
            ),
            None,
        ),
        30,
        "the garbage record on dead-letter",
    )
    assert letter.source_topic == settings.topics.metrics and letter.reason
    late_stop = wait_for(
        lambda: client.heartbeat(late.trial.trial_id, late_attempt, 1).action == events_pb2.STOP,
        60,
        "a decision for the report published after the garbage",
    )
    assert late_stop
    for proc in system["procs"].values():
        assert proc.proc.poll() is None, f"{proc.module} died"

    # The CLI answers the same lineage query as plain JSON (--json; a table without it).
    env = {
        **os.environ,
        "LADDER_SUGGEST_ADDR": settings.suggest_addr,
        "LADDER_EVALUATE_ADDR": settings.evaluate_addr,
        "LADDER_LINEAGE_ADDR": settings.lineage_addr,
    }
    cli = [sys.executable, "-m", "ladder.cli"]
    shown = subprocess.run(
        [*cli, "lineage", worst_tid, "--json"], env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["trial_id"] == worst_tid and record["decisions"][-1]["action"] == "STOP"
    missing = subprocess.run(
        [*cli, "lineage", "no-such-trial"], env=env, capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 2 and "NOT_FOUND" in missing.stderr
    assert "'no-such-trial'" in missing.stderr
    client.close()
    producer.close()
    decisions.close()
    dead.close()


def test_one_trace_follows_a_trial_across_services(system: dict) -> None:
    from ladder import telemetry
    from opentelemetry import trace

    telemetry.setup("e2e-test")
    settings: Settings = system["settings"]
    client = LadderClient(settings)
    study = client.create_study(
        {
            "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
            "scheduler": {"kind": "asha", "max_resource": 9, "min_population": 1},
        }
    )
    decisions = TopicReader(settings, settings.topics.decisions)
    with trace.get_tracer("e2e").start_as_current_span("trial") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        suggestion = client.suggest(study.study_id, "w-traced")[0]
        tid = suggestion.trial.trial_id
        client.start_trial(tid, "w-traced", "a-traced")
        client.report_metric(study.study_id, tid, "a-traced", 1, 0.5, metric="val_loss")
        client.flush()

    def traced_decision() -> bytes | None:
        for record in decisions.poll():
            if record.key == tid.encode():
                return dict(record.headers or []).get("traceparent")
        return None

    traceparent = wait_for(traced_decision, 60, "the traced trial's decision")
    assert traceparent.decode().split("-")[1] == trace_id
    procs = system["procs"]
    for module in ("services.suggest", "services.evaluate", "services.earlystop"):
        assert wait_for(
            lambda m=module: trace_id in procs[m].log_text(), 30, f"trace id in {module} logs"
        )
    client.close()
    decisions.close()
