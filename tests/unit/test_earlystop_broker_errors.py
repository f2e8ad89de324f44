"""A broker that refuses what early-stop produces for a reason not the record's is an
outage: the stage retries and decides, it never dead-letters the good record behind.

tansu on S3 answers a produce it cannot store (its object store killed) with
UNKNOWN_SERVER_ERROR, raised by aiokafka as ``UnknownError`` with ``retriable`` False;
the chaos run of 09:48 (bench/README.md) lost a decision that way.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiokafka import errors as kafka_errors
from faust.exceptions import ProducerSendError
from ladder import poison
from ladder.poison import Failure, PoisonPolicy
from ladder.testing import FakeTopic, fake_event
from ladder.v1 import events_pb2
from test_earlystop_engine import FakeStudies, agents_over_fakes, base_spec

from services.earlystop import agents as agents_module
from services.earlystop.agents import STAGE1, STAGE2, EarlyStopAgents, producer_cause

STUDY = "outage"


@pytest.mark.parametrize(
    "exc",
    [
        kafka_errors.UnknownError(),  # tansu: UNKNOWN_SERVER_ERROR, its storage away
        kafka_errors.TopicAuthorizationFailedError(),  # an operator's fix
        kafka_errors.ProducerClosed(),
        kafka_errors.KafkaConnectionError("broker gone"),
        kafka_errors.KafkaTimeoutError(),
    ],
    ids=["unknown-server-error", "authorization", "producer-closed", "connection", "timeout"],
)
def test_a_kafka_error_not_about_the_record_is_an_outage(exc: Exception) -> None:
    assert not exc.retriable or isinstance(exc, kafka_errors.KafkaConnectionError)
    assert poison.classify(exc) is Failure.TRANSIENT
    assert not poison.gives_up(exc, 1000, max_attempts=3)


@pytest.mark.parametrize(
    "exc",
    [
        kafka_errors.MessageSizeTooLargeError(),
        kafka_errors.RecordTooLargeError(),
        kafka_errors.RecordListTooLargeError(),
        kafka_errors.CorruptRecordException(),
        kafka_errors.InvalidTimestampError(),
    ],
    ids=["size", "record-size", "list-size", "corrupt", "timestamp"],
)
def test_a_kafka_refusal_of_the_record_itself_is_given_up_at_once(exc: Exception) -> None:
    assert poison.classify(exc) is Failure.PERMANENT


def wrapped(cause: Exception) -> ProducerSendError:
    """What Faust raises when aiokafka's send raised ``cause``."""
    try:
        raise ProducerSendError(f"Error while sending: {cause!r}") from cause
    except ProducerSendError as exc:
        return exc


def test_a_failed_send_is_judged_by_the_producer_error_faust_wraps() -> None:
    refused, too_large = kafka_errors.UnknownError(), kafka_errors.MessageSizeTooLargeError()
    assert producer_cause(wrapped(refused)) is refused
    assert producer_cause(wrapped(too_large)) is too_large
    other = RuntimeError("not a send")
    assert producer_cause(other) is other
    agents, _ = agents_over_fakes(FakeStudies(base_spec()), policy=PoisonPolicy(max_attempts=3))
    assert not agents._gives_up(wrapped(refused), 1000)
    assert agents._gives_up(wrapped(too_large), 1)
    # Faust's wrapper alone is of unknown kind: given up after max_attempts.
    assert agents._gives_up(ProducerSendError("no cause"), 3)


class RefusingTopic(FakeTopic):
    """A topic whose first ``refusals`` sends the broker answers as tansu does while its
    object store is away; the later ones it acknowledges."""

    def __init__(self, name: str, refusals: int) -> None:
        super().__init__(name)
        self.refusals = refusals
        self.acked: list[bytes] = []

    async def send(self, *, value: bytes, **_: Any) -> asyncio.Future[None]:
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.refusals:
            self.refusals -= 1
            answer.set_exception(kafka_errors.UnknownError())
        else:
            self.acked.append(value)
            answer.set_result(None)
        return answer


def refusing(agents: EarlyStopAgents, role: str, refusals: int) -> RefusingTopic:
    topic = RefusingTopic(role, refusals)
    setattr(agents, f"{role}_topic", topic)
    return topic


def stage_agents(monkeypatch: pytest.MonkeyPatch) -> tuple[EarlyStopAgents, Any]:
    monkeypatch.setattr(agents_module, "backoff_delay", lambda attempt: 0.0)
    policy = PoisonPolicy(max_attempts=3, stuck_after_s=-1.0)  # failing counts as stuck
    return agents_over_fakes(FakeStudies(base_spec()), policy=policy)


def test_stage_2_decides_a_crossing_whose_decision_the_broker_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Five refusals (more than max_attempts): the crossing is decided once the broker
    stores again, its leaderboard entry written once, nothing dead-lettered."""
    agents, app = stage_agents(monkeypatch)
    decisions = refusing(agents, "decisions", 5)
    crossing = events_pb2.RungCrossing(
        study_id=STUDY, trial_id="t25", rung=0, resource=1, smoothed_value=0.3, raw_value=0.3
    )
    event = fake_event("rungs", 7, crossing.SerializeToString())
    stuck: list[list[str]] = []
    on_rung = agents.on_rung

    async def watched(event: Any, work: Any) -> None:
        stuck.append(agents.health.stuck())
        await on_rung(event, work)

    done = asyncio.run(
        agents._handle_batch(STAGE2, [event], watched, agents._finish_decisions, True)
    )

    assert done == [event]
    assert app.topics["dead"].sent == []
    [decided] = [events_pb2.Decision.FromString(raw) for raw in decisions.acked]
    assert (decided.trial_id, decided.rung, decided.action) == ("t25", 0, events_pb2.CONTINUE)
    assert decided.population == 1
    assert list(agents.tables.entries.data) == ['["outage",0,0,"t25"]']
    assert any("UnknownError" in line for lines in stuck for line in lines)
    assert agents.health.stuck() == []


def test_stage_1_emits_the_crossing_of_a_report_whose_crossing_the_broker_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The report that crossed rung 0 stays a report: its crossing goes out once the
    broker stores again, and the trial's curve records the rung then, not before."""
    agents, app = stage_agents(monkeypatch)
    rungs = refusing(agents, "rungs", 4)
    report = {"study_id": STUDY, "trial_id": "t25", "step": 1, "value": 0.3}
    event = fake_event("metrics", 3, json.dumps(report).encode())

    async def run() -> list[Any]:
        done = await agents._handle_batch(
            STAGE1, [event], agents.on_metric, agents._finish_curves, False
        )
        await agents.curves.flush()
        return done

    assert asyncio.run(run()) == [event]
    assert app.topics["dead"].sent == []
    [crossing] = [events_pb2.RungCrossing.FromString(raw) for raw in rungs.acked]
    assert (crossing.trial_id, crossing.rung) == ("t25", 0)
    assert agents.tables.curves.data["t25"]["last_rung"] == 0
