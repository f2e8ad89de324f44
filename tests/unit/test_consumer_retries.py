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
