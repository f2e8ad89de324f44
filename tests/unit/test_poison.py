"""Poison records (ladder.poison) and how an early-stop stage treats them: which
failures are retried, what a dead letter keeps, which parked records leave when."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import confluent_kafka
import pytest
import redis
from aiokafka import errors as kafka_errors
from ladder import poison
from ladder.poison import Failure, ParkingLot, PoisonPolicy
from ladder.testing import FakeApp, fake_event
from ladder.v1 import events_pb2
from test_earlystop_engine import agents_over_fakes

from services.earlystop import agents as agents_module
from services.earlystop.agents import STAGE1, BatchWork, EarlyStopAgents
from services.earlystop.health import StageHealth


def json_report(**fields: Any) -> bytes:
    body = {"study_id": "s", "trial_id": "t", "step": 1, "value": 0.5, **fields}
    return json.dumps(body).encode()


def raised(call: Callable[[], object]) -> Exception:
    with pytest.raises(Exception) as caught:
        call()
    return caught.value  # type: ignore[return-value]


@pytest.mark.parametrize(
    "call",
    [
        lambda: events_pb2.MetricReport(ts_ms=2**64),  # out of range for int64
        lambda: float(10**400),  # a JSON integer too large for a double
        lambda: events_pb2.MetricReport(study_id="s\ud800"),  # not UTF-8
    ],
    ids=["ts_ms-int64", "step-1e400-int", "lone-surrogate"],
)
def test_a_record_no_retry_can_fix_is_given_up_at_once(call: Callable[[], object]) -> None:
    exc = raised(call)
    assert poison.classify(exc) is Failure.PERMANENT
    assert poison.gives_up(exc, 1, max_attempts=3)
    assert type(exc).__name__ in poison.describe(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "refused"),
        TimeoutError(),
        kafka_errors.KafkaConnectionError("broker gone"),
        kafka_errors.KafkaTimeoutError(),
        kafka_errors.NotLeaderForPartitionError(),
    ],
)
def test_the_broker_away_is_retried_for_as_long_as_it_lasts(exc: Exception) -> None:
    assert poison.classify(exc) is Failure.TRANSIENT
    assert not poison.gives_up(exc, 1000, max_attempts=3)


def test_an_error_of_unknown_kind_is_tried_a_bounded_number_of_times() -> None:
    exc = RuntimeError("a bug one record meets")
    assert poison.classify(exc) is Failure.UNKNOWN
    assert [poison.gives_up(exc, n, max_attempts=3) for n in (1, 2, 3)] == [False, False, True]
    assert poison.classify(kafka_errors.MessageSizeTooLargeError()) is Failure.PERMANENT


def _kafka(code: int) -> confluent_kafka.KafkaException:
    # As a delivery report or produce() raises it: retriable() is False for every code.
    return confluent_kafka.KafkaException(confluent_kafka.KafkaError(code))


@pytest.mark.parametrize(
    "code",
    [
        confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE,
        confluent_kafka.KafkaError.INVALID_RECORD,
        confluent_kafka.KafkaError.INVALID_MSG,
    ],
    ids=["size", "invalid-record", "corrupt"],
)
def test_a_record_the_broker_refuses_is_given_up_at_once(code: int) -> None:
    assert poison.classify(_kafka(code)) is Failure.PERMANENT
    assert not poison.is_outage(_kafka(code))


@pytest.mark.parametrize(
    "exc",
    [
        _kafka(confluent_kafka.KafkaError._MSG_TIMED_OUT),
        _kafka(confluent_kafka.KafkaError._TRANSPORT),
        _kafka(confluent_kafka.KafkaError._ALL_BROKERS_DOWN),
        # An operator's fix, not the record's: retried (health says stuck meanwhile)
        # rather than every good record dead-lettered.
        _kafka(confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED),
        confluent_kafka.KafkaException(
            confluent_kafka.KafkaError(confluent_kafka.KafkaError.INVALID_RECORD, retriable=True)
        ),
    ],
    ids=["timed-out", "transport", "brokers-down", "authorization", "retriable"],
)
def test_a_kafka_error_about_the_broker_is_an_outage(exc: Exception) -> None:
    assert poison.classify(exc) is Failure.TRANSIENT


@pytest.mark.parametrize(
    "exc",
    [
        redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
        redis.ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL"),
        redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
        redis.exceptions.MasterDownError("Link with MASTER is down"),
        # Older servers wrap a script's failed redis.call in a plain ERR.
        redis.ResponseError("Error running script (call to f_1): @user_script:1: -OOM command not"),
    ],
    ids=["oom", "busy", "loading", "masterdown", "oom-in-script"],
)
def test_redis_full_loading_or_busy_is_an_outage(exc: Exception) -> None:
    assert poison.classify(exc) is Failure.TRANSIENT
    assert poison.is_outage(exc)


def test_another_redis_error_is_of_unknown_kind() -> None:
    for exc in (redis.ResponseError("WRONGTYPE Operation"), redis.ResponseError("BUSYGROUP x")):
        assert poison.classify(exc) is Failure.UNKNOWN


def test_parked_items_leave_in_order_when_their_key_is_known_or_its_wait_is_over() -> None:
    lot: ParkingLot[str, int] = ParkingLot(per_key=2)
    assert lot.park("a", 1, deadline=10) and lot.park("b", 2, deadline=5)
    assert lot.park("a", 3, deadline=20)
    assert not lot.park("a", 4, deadline=20)  # bounded per key
    assert lot.room("a") == 0 and lot.room("c") == 2
    assert lot.next_deadline() == 5
    assert lot.release(lambda key: False, now=4) == []
    assert lot.release(lambda key: False, now=5) == [2]  # b's wait is over
    assert lot.release(lambda key: key == "a", now=6) == [1, 3]
    assert len(lot) == 0 and "a" not in lot


class Studies:
    """A study directory where every study is known."""

    unknown_study_wait = 0.0

    def get(self, study_id: str) -> object:
        return object()


def stage_agents() -> tuple[EarlyStopAgents, FakeApp, StageHealth]:
    policy = PoisonPolicy(max_attempts=3, stuck_after_s=-1.0)  # failing counts as stuck
    agents, app = agents_over_fakes(Studies(), policy=policy)
    return agents, app, agents.health


def test_a_batch_dead_letters_its_poison_and_handles_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Offsets 0..4: 1 overflows (no retry), 3 fails with an unknown error every time
    (given up after max_attempts), 2 meets the broker away twice (retried, then
    handled); 0, 2 and 4 are handled, 1 and 3 dead-lettered with their reasons."""
    monkeypatch.setattr(agents_module, "backoff_delay", lambda attempt: 0.0)
    agents, app, health = stage_agents()
    calls: dict[int, int] = {}
    handled: list[int] = []
    seen_failing: list[list[str]] = []

    async def handler(event: Any, work: BatchWork) -> None:
        offset = event.message.offset
        calls[offset] = calls.get(offset, 0) + 1
        if offset == 1:
            events_pb2.MetricReport(ts_ms=2**64)
        if offset == 3:
            raise RuntimeError("handler bug")
        if offset == 2 and calls[2] <= 2:
            seen_failing.append(health.stuck())
            raise ConnectionError("broker away")
        handled.append(offset)

    async def finish(work: BatchWork, acked: bool) -> None:
        return None

    events = [fake_event("metrics", i, json_report()) for i in range(5)]
    done = asyncio.run(agents._handle_batch(STAGE1, events, handler, finish, False))

    assert [e.message.offset for e in done] == [0, 1, 2, 3, 4]  # none parked: all acked
    assert handled[-3:] == [0, 2, 4]
    assert calls[1] == 1  # out of range: never retried
    assert calls[3] == 3  # PoisonPolicy.max_attempts
    letters = [events_pb2.DeadLetter.FromString(v) for v in app.topics["dead"].sent]
    # A redone batch sends its dead letters again (at least once): the last attempt's.
    last = letters[-2:]
    assert [(d.source_offset, d.source_topic) for d in last] == [(1, "metrics"), (3, "metrics")]
    assert {d.source_offset for d in letters} == {1, 3}
    assert last[0].reason.startswith("ValueError: Value out of range")
    assert last[0].payload == events[1].value
    assert last[1].reason == "RuntimeError: handler bug"
    # While the broker was away the stage was reported stuck, then moved on.
    assert any("broker away" in line for lines in seen_failing for line in lines)
    assert health.stuck() == []

