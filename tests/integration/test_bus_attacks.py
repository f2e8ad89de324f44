"""The outside tester's attacks on the bus (issue 19), replayed against the real stack:
suggest, evaluate, early-stop (its trial check on) and lineage as processes, on the
embedded broker and a Redis that wants a password.

The attacker is a plain Kafka client that can reach the broker and knows ids, but
holds no signing key (ladder.signing) and no Redis password.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
import redis
from kafka import KafkaProducer
from ladder.config import Settings
from ladder.signing import Keyring
from ladder.testing import Clients, ServiceProcess, unless_not_found, wait_for
from ladder.v1 import (
    events_pb2,
    lineage_pb2,
    lineage_pb2_grpc,
    space_pb2,
    study_pb2,
    trial_pb2,
)
from test_earlystop import Tail, dead_letters, decisions_of

pytestmark = pytest.mark.integration

NAME = "bus-attacks"


def study_config() -> study_pb2.StudyConfig:
    return study_pb2.StudyConfig(
        name=NAME,
        space=space_pb2.SearchSpace(parameters=[space_pb2.Parameter(
            name="x", float_range=space_pb2.FloatRange(low=0.0, high=1.0)
        )]),
        metric="val_loss",
        direction=study_pb2.MINIMIZE,
        seed=3,
        scheduler=study_pb2.SchedulerConfig(
            kind=study_pb2.ASHA, min_resource=1, max_resource=9, reduction_factor=3,
            min_population=3,
        ),
    )


class Stack:
    def __init__(self, infra: Settings, services: dict[str, ServiceProcess]) -> None:
        self.infra = infra
        self.topics = infra.topics
        self.clients = Clients(services["services.suggest"].addr,
                               services["services.evaluate"].addr)
        self.lineage_channel = grpc.insecure_channel(services["services.lineage"].addr)
        self.lineage = lineage_pb2_grpc.LineageServiceStub(self.lineage_channel)
        self.attacker = KafkaProducer(bootstrap_servers=infra.kafka_bootstrap, linger_ms=0)
        self.tail = Tail(infra, [self.topics.decisions, self.topics.dead_letter])

    def running_trial(self, study_id: str, worker: str) -> tuple[str, str]:
        trial_id = self.clients.one(study_id, worker).trial.trial_id
        attempt = f"a-{uuid.uuid4().hex[:6]}"
        self.clients.start(trial_id, attempt, worker)
        return trial_id, attempt

    def publish(self, topic: str, key: str, value: bytes, headers: list | None = None) -> None:
        self.attacker.send(topic, key=key.encode(), value=value, headers=headers or [])
        self.attacker.flush(10)

    def report(self, study_id: str, trial_id: str, value: float, step: int = 1) -> bytes:
        """A metric report in the documented JSON form, as another team's service sends."""
        body = json.dumps({
            "study_id": study_id, "trial_id": trial_id, "step": step, "value": value,
            "metric": "val_loss",
        }).encode()
        self.publish(self.topics.metrics, trial_id, body)
        return body

    def letters(self, payload: bytes, service: str, count: int = 1) -> list[Any]:
        """The dead letters of ``payload`` sent by ``service`` (waits for ``count``)."""
        return self.tail.wait_for(
            lambda records: (found := [
                d for d in dead_letters(records) if d.payload == payload and d.service == service
            ]) and len(found) >= count and found,
            60, f"{service}'s dead letter",
        )

    def decision(self, study_id: str, trial_id: str) -> Any:
        return self.tail.wait_for(
            lambda records: [d for d, _ in decisions_of(records, study_id)
                             if d.trial_id == trial_id],
            60, f"decision for {trial_id}",
        )[0]


@pytest.fixture(scope="module")
def stack(infra: Settings, start_module_service: Callable[..., ServiceProcess]) -> Iterator[Stack]:
    services = {
        module: start_module_service(module, {"LADDER_EARLYSTOP_UNKNOWN_STUDY_WAIT": "5"})
        for module in ("services.suggest", "services.evaluate", "services.lineage",
                       "services.earlystop")
    }
    stack = Stack(infra, services)
    yield stack
    stack.tail.close()
    stack.attacker.close()
    stack.lineage_channel.close()
    stack.clients.close()


def forged_stop(study_id: str, trial_id: str) -> bytes:
    return events_pb2.Decision(
        study_id=study_id, trial_id=trial_id, action=events_pb2.STOP, rung=0, resource=1,
        cutoff=0.0, rank=9, population=9, reason="forged", scheduler="asha",
    ).SerializeToString()


def test_a_forged_stop_decision_changes_nothing(stack: Stack) -> None:
    study_id = stack.clients.create(study_config()).study_id
    trial_id, attempt = stack.running_trial(study_id, "w-stop")
    unsigned = forged_stop(study_id, trial_id)
    stack.publish(stack.topics.decisions, trial_id, unsigned)
    letter = stack.letters(unsigned, "evaluate")[0]
    assert letter.source_topic == stack.topics.decisions
    assert letter.reason.startswith("unsigned record on")
    # Signed, but with a key the stack does not hold: refused as well.
    other_key = Keyring({"k-attacker": b"\x01" * 32}, "k-attacker")
    badly = forged_stop(study_id, trial_id) + b"\x68\x01"  # other bytes than the first one
    stack.publish(stack.topics.decisions, trial_id, badly,
                  other_key.sign(stack.topics.decisions, trial_id.encode(), badly))
    assert "unknown key id 'k-attacker'" in stack.letters(badly, "evaluate")[0].reason
    # Lineage refused them too: it records no decision for the trial.
    stack.letters(badly, "lineage")
    assert stack.clients.heartbeat(trial_id, attempt).action == events_pb2.CONTINUE
    assert stack.clients.get(trial_id).state == trial_pb2.RUNNING
    lineage = stack.lineage.GetTrialLineage(
        lineage_pb2.GetTrialLineageRequest(trial_id=trial_id), timeout=30
    )
    assert not lineage.decisions


def test_a_forged_study_event_neither_renames_nor_disables_early_stopping(
    stack: Stack,
) -> None:
    study = stack.clients.create(study_config())
    study_id = study.study_id
    forged = study_pb2.Study()
    forged.CopyFrom(study)
    forged.config.name = "renamed-by-someone-else"
    forged.config.scheduler.kind = study_pb2.NONE
    payload = events_pb2.StudyEvent(study=forged, ts_ms=int(time.time() * 1000) + 60_000)
    unsigned = payload.SerializeToString()
    stack.publish(stack.topics.studies, study_id, unsigned)
    assert stack.letters(unsigned, "earlystop")[0].reason.startswith("unsigned record on")
    stack.letters(unsigned, "lineage")
    # Early stopping still runs for the study: 4 real trials at rung 0, the worst stopped.
    trials = [stack.running_trial(study_id, f"w-es{i}")[0] for i in range(4)]
    for i, trial_id in enumerate(trials):
        stack.report(study_id, trial_id, 0.1 * (i + 1))
        stack.decision(study_id, trial_id)  # one by one: a deterministic ASHA outcome
    assert stack.decision(study_id, trials[-1]).action == events_pb2.STOP
    listings = wait_for(
        lambda: [s for s in stack.lineage.ListStudyListings(
            lineage_pb2.ListStudyListingsRequest(), timeout=30
        ).studies if s.study.study_id == study_id],
        30, "the study in lineage",
    )
    assert listings[0].study.config.name == NAME
    assert listings[0].study.config.scheduler.kind == study_pb2.ASHA


def test_phantom_trials_do_not_push_a_real_trial_out_of_its_rung(stack: Stack) -> None:
    study_id = stack.clients.create(study_config()).study_id
    other_study = stack.clients.create(study_config()).study_id
    real, _ = stack.running_trial(study_id, "w-real")
    elsewhere, _ = stack.running_trial(other_study, "w-else")
    suggested = stack.clients.one(study_id, "w-idle").trial.trial_id  # never started
    phantoms = [
        stack.report(study_id, f"{study_id}-phantom{i}", 0.001) for i in range(12)
    ]
    for payload in phantoms:
        reason = stack.letters(payload, "earlystop")[0].reason
        assert reason.startswith("unknown trial")
    foreign = stack.report(study_id, elsewhere, 0.001)
    assert stack.letters(foreign, "earlystop")[0].reason.startswith(
        "trial belongs to another study"
    )
    idle = stack.report(study_id, suggested, 0.001)
    assert stack.letters(idle, "earlystop")[0].reason.startswith("trial not running")
    # The real trial's plain JSON report is accepted and judged on a rung the phantoms
    # are not on: alone there, it goes on.
    stack.report(study_id, real, 0.5)
    decision = stack.decision(study_id, real)
    assert decision.action == events_pb2.CONTINUE
    assert decision.population == 1
    # Nor do lineage's curves of the study show the phantoms (it stores their points:
    # the record of what was published; the trials of the study are the real ones).
    # Lineage ingests the study from the topics too: NOT_FOUND until it has.
    def curve_ids() -> set[str]:
        answer = unless_not_found(lambda: stack.lineage.GetStudyCurves(
            lineage_pb2.GetStudyCurvesRequest(study_id=study_id), timeout=30
        ))
        return {c.trial_id for c in answer.curves} if answer else set()

    shown = wait_for(lambda: real in (ids := curve_ids()) and ids, 30, "the real curve")
    assert shown <= {real, suggested}



def test_redis_refuses_a_client_without_the_password(infra: Settings) -> None:
    url = urlsplit(infra.redis_url)
    assert url.password, "the embedded Redis must be given a password"
    anonymous = redis.Redis(host=url.hostname, port=url.port, socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    wrong = redis.Redis(host=url.hostname, port=url.port, password="guess", socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    assert redis.Redis.from_url(infra.redis_url, socket_timeout=5).ping()
