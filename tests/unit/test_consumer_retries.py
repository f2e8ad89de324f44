"""Which failed records ConsumerLoop retries, for how long, and when it reports being
stuck (ladder.bus.RecordRetries; the clock is passed in)."""

from __future__ import annotations

import redis
from ladder.bus import RecordRetries
from ladder.codec import BadRecord
from ladder.poison import PoisonPolicy

TP = ("t.metrics", 0)


def test_a_bad_record_is_dead_lettered_at_once() -> None:
    retries = RecordRetries(PoisonPolicy(max_attempts=3))
    verdict = retries.failed(TP, 5, BadRecord("no"), now=0.0)
    assert verdict.retry_at is None and not retries.holding


def test_an_unexpected_error_is_retried_a_bounded_number_of_times() -> None:
    retries = RecordRetries(PoisonPolicy(max_attempts=3))
    first = retries.failed(TP, 5, KeyError("bug"), now=0.0)
    assert first.retry_at is not None and retries.paused(TP)
    assert retries.due(first.retry_at - 0.01) == []
    assert retries.due(first.retry_at) == [(TP, 5)] and not retries.paused(TP)
    assert retries.failed(TP, 5, KeyError("bug"), now=1.0).retry_at is not None
    third = retries.failed(TP, 5, KeyError("bug"), now=2.0)
    assert third.attempts == 3 and third.retry_at is None and not retries.holding


def test_an_outage_is_retried_until_it_ends_and_reported_when_long() -> None:
    retries = RecordRetries(PoisonPolicy(max_attempts=2, stuck_after_s=30))
    for attempt in range(1, 50):
        verdict = retries.failed(TP, 5, redis.ConnectionError("refused"), now=attempt)
        assert verdict.retry_at is not None and verdict.retry_at - attempt <= 5.0
    assert retries.stuck(now=29.0) is None
    reason = retries.stuck(now=40.0)
    assert reason is not None and "@5" in reason and "ConnectionError: refused" in reason
    retries.succeeded(TP)
    assert retries.stuck(now=40.0) is None and not retries.holding


def test_partitions_are_held_apart() -> None:
    retries = RecordRetries(PoisonPolicy())
    retries.failed(TP, 5, TimeoutError(), now=0.0)
    assert retries.paused(TP) and not retries.paused(("t.trials", 0))
    assert not retries.paused(("t.metrics", 1))


def test_another_offset_starts_its_own_count() -> None:
    retries = RecordRetries(PoisonPolicy(max_attempts=2))
    retries.failed(TP, 5, KeyError(), now=0.0)
    assert retries.failed(TP, 6, KeyError(), now=1.0).attempts == 1


def test_an_error_no_retry_can_fix_is_dead_lettered_at_once_as_in_early_stop() -> None:
    # One classification (ladder.poison) for the librdkafka and the Faust consumers.
    retries = RecordRetries(PoisonPolicy(max_attempts=3))
    verdict = retries.failed(TP, 5, ValueError("Value out of range: 1e400"), now=0.0)
    assert verdict.attempts == 1 and verdict.retry_at is None and not retries.holding


def test_a_failed_dead_letter_is_retried_alone_with_back_off_whatever_its_error() -> None:
    retries = RecordRetries(PoisonPolicy(max_attempts=3))
    assert retries.failed(TP, 5, BadRecord("no"), now=0.0).retry_at is None
    # The dead letter's send fails with an error classed permanent: still held, and
    # its partition resumes after the back-off (a dropped entry would leave it paused).
    verdict = retries.finish_failed(TP, 5, "no", False, ValueError("bad"), now=0.0)
    assert verdict.retry_at is not None and retries.paused(TP)
    assert retries.finishing(TP, 5) == ("no", False)
    assert retries.finishing(TP, 6) is None
    assert retries.due(verdict.retry_at) == [(TP, 5)]
    later = retries.finish_failed(TP, 5, "no", True, ConnectionError(), now=verdict.retry_at)
    assert later.attempts == 2 and later.retry_at is not None
    assert retries.finishing(TP, 5) == ("no", True)  # sent: only on_done is left
    retries.succeeded(TP)
    assert not retries.holding


class _Raw:
    """A confluent_kafka.Message as ConsumerLoop reads it."""

    def __init__(self, offset: int) -> None:
        self._offset = offset

    def topic(self) -> str:
        return TP[0]

    def partition(self) -> int:
        return TP[1]

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"bad"

    def headers(self) -> list:
        return []

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)


class _Producer:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.letters: list[str] = []

    def dead_letter(self, topic: str, reason: str, *args: object) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.letters.append(reason)


def test_a_record_given_up_on_is_not_handled_again_while_its_dead_letter_fails() -> None:
    from ladder.bus import ConsumerLoop
    from ladder.config import Settings

    calls: list[int] = []
    done: list[int] = []
    done_failures = [RuntimeError("on_done bug")]

    def handler(record: object) -> None:
        calls.append(1)
        raise BadRecord("undecodable")

    def on_done(record: object) -> None:
        if done_failures:
            raise done_failures.pop(0)
        done.append(1)

    producer = _Producer([ValueError("refused"), ConnectionError("broker away")])
    loop = ConsumerLoop(
        Settings("k:9092", "redis://r"),
        "test",
        [TP[0]],
        handler,
        producer,  # type: ignore[arg-type]
        group_id=None,
        untraced_topics=[TP[0]],
        on_done=on_done,
        policy=PoisonPolicy(max_attempts=3),
    )
    assert not loop._process(_Raw(5))  # given up; the dead letter fails (permanent kind)
    assert loop._retries.paused(TP)
    assert not loop._process(_Raw(5))  # the broker away
    assert not loop._process(_Raw(5))  # sent; on_done fails
    assert loop._process(_Raw(5))  # on_done alone again
    assert calls == [1] and producer.letters == ["undecodable"] and done == [1]
    assert loop.dead_lettered == 1 and not loop._retries.holding


def test_a_rebalance_forgets_held_records_so_commits_go_on() -> None:
    # The partition restarts from its committed offset (never past a held record) in
    # whichever member owns it now; a record held here for a partition that moved away
    # would keep `holding` true and stop every commit of this member.
    retries = RecordRetries(PoisonPolicy(max_attempts=3))
    retries.failed(TP, 5, KeyError("bug"), now=0.0)
    assert retries.holding
    retries.forget_all()
    assert not retries.holding and not retries.paused(TP) and retries.stuck(now=1e9) is None
