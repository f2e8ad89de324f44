"""What a failed or interrupted attempt does to its trial (``ladder.state.attempts``):
the rules of ``ladder.failures`` applied to the trial's counts, with the reason it
gives."""

from __future__ import annotations

import pytest
from ladder import failures
from ladder.state import Transition, trial_event, trial_from_hash
from ladder.state.attempts import (
    Counts,
    FailOutcome,
    end_name,
    fail_outcome,
    interrupt_outcome,
    timeout_disposition,
)
from ladder.study import OomPolicy
from ladder.v1 import events_pb2, trial_pb2


def outcome(kind: int, counted: Counts | None = None, **kw: object) -> FailOutcome:
    counted = counted or Counts()
    args = {
        "oom": OomPolicy.RETRY_ONCE,
        "counted": counted,
        "max_failures": 3,
        "max_interruptions": 25,
        "attempt_number": counted.failures + counted.interruptions + 1,
        **kw,
    }
    return fail_outcome(kind, "why", **args)


def test_preemption_never_counts_and_never_fails_the_trial() -> None:
    # Even with every failure used (evaluate's --max-attempts lowered since), a hand-back
    # after SIGTERM leaves the trial resumable.
    for so_far in (0, 2, 3, 7):
        counted = Counts(failures=so_far, failure_kind=failures.USER_ERROR, interruptions=4)
        handed_back = outcome(failures.PREEMPTED, counted)
        assert not handed_back.counts and not handed_back.final
        # One more interruption; the failures and the last counted kind stay.
        assert handed_back.after == Counts(so_far, failures.USER_ERROR, 0, 5)
        assert handed_back.attempt_end == trial_pb2.ATTEMPT_PREEMPTED
    reason = outcome(failures.PREEMPTED, Counts(failures=1)).reason
    assert reason == "preempted: why; not counted (1 of 3 failures used)"


def test_interruptions_beyond_max_interruptions_fail_the_trial() -> None:
    # The trial was interrupted twice and allows two: a third preemption fails it.
    twice = Counts(failures=1, failure_kind=failures.OUT_OF_MEMORY, interruptions=2)
    third = outcome(failures.PREEMPTED, twice, max_interruptions=2)
    assert third.final and not third.counts
    assert third.after == Counts(1, failures.INFRASTRUCTURE, 0, 3)
    assert third.reason == (
        "preempted: why; FAILED (INFRASTRUCTURE): interrupted 3 times, more than "
        "max_interruptions (2)"
    )
    assert not outcome(failures.PREEMPTED, twice, max_interruptions=3).final
    assert not outcome(failures.PREEMPTED, twice, max_interruptions=None).final
    # A lease expiry or a stall: the same rule, the script words the rest of the reason.
    expired = interrupt_outcome(twice, 2)
    assert expired.final and expired.after == third.after
    assert expired.note.startswith("FAILED (INFRASTRUCTURE): interrupted 3 times")
    kept = interrupt_outcome(twice, 25)
    assert not kept.final and kept.note == "resumable, not counted"
    assert kept.after == Counts(1, failures.OUT_OF_MEMORY, 0, 3)


def test_retried_failures_count_until_max_failures() -> None:
    first = outcome(failures.INFRASTRUCTURE)
    assert (first.counts, first.final, first.after.failures) == (True, False, 1)
    assert first.reason == "attempt 1 failed (INFRASTRUCTURE, retried; 1 of 3 failures used): why"
    last = outcome(failures.INFRASTRUCTURE, Counts(failures=2, interruptions=7))
    assert (last.final, last.attempt_end) == (True, trial_pb2.ATTEMPT_FAILED)
    assert last.after == Counts(3, failures.INFRASTRUCTURE, 0, 7)
    # Attempt 10: seven interruptions and two failures came before it.
    assert last.reason == "attempt 10 failed (INFRASTRUCTURE; all 3 failures used): why"


@pytest.mark.parametrize(
    ("kind", "end", "says"),
    [
        (failures.USER_ERROR, trial_pb2.ATTEMPT_FAILED, "USER_ERROR, not retried"),
        (failures.DIVERGED, trial_pb2.ATTEMPT_FAILED, "DIVERGED, not retried"),
        (failures.TIMEOUT, trial_pb2.ATTEMPT_TIMED_OUT, "TIMEOUT, not retried"),
    ],
)
def test_failures_that_are_not_retried_are_final_at_once(kind: int, end: int, says: str) -> None:
    failed = outcome(kind)
    assert (failed.counts, failed.final, failed.after) == (True, True, Counts(1, kind))
    assert failed.attempt_end == end and failed.reason == f"attempt 1 failed ({says}): why"


def test_out_of_memory_retries_once_then_is_infeasible() -> None:
    oom = failures.OUT_OF_MEMORY
    first = outcome(oom)
    assert not first.final and first.after == Counts(1, oom, oom_failures=1)
    again = outcome(oom, first.after)
    assert again.final and again.after.oom_failures == 2
    assert again.reason == "attempt 2 failed (OUT_OF_MEMORY again, not retried): why"
    # Another class in between does not make a second out-of-memory worth a retry.
    between = outcome(failures.INFRASTRUCTURE, first.after, max_failures=5)
    assert between.after == Counts(2, failures.INFRASTRUCTURE, oom_failures=1)
    third = outcome(oom, between.after, max_failures=5)
    assert third.final
    assert third.reason == "attempt 3 failed (OUT_OF_MEMORY again, not retried): why"
    infeasible = outcome(oom, oom=OomPolicy.INFEASIBLE)
    assert infeasible.final and "OUT_OF_MEMORY: infeasible, not retried" in infeasible.reason


def test_running_out_of_time_is_ladder_failures_timeout() -> None:
    rule = failures.disposition(failures.TIMEOUT, OomPolicy.RETRY_ONCE, oom_before=False)
    assert timeout_disposition() == rule
    assert timeout_disposition() == failures.Disposition(counts=True, retry=False)


def test_attempt_end_names_are_lineage_outcomes() -> None:
    assert end_name(trial_pb2.ATTEMPT_LEASE_EXPIRED) == "lease_expired"
    assert end_name(trial_pb2.ATTEMPT_TIMED_OUT) == "timed_out"
    assert end_name(99) == "?"


def test_the_trial_hash_carries_failures_overhead_and_the_wall_clock() -> None:
    trial = trial_from_hash(
        {
            "id": b"st-1-t1",
            "failures": b"2",
            "failure_kind": str(failures.OUT_OF_MEMORY).encode(),
            "last_end": str(trial_pb2.ATTEMPT_PREEMPTED).encode(),
            "ckpt_s": b"1.5",
            "train_s": b"30",
            "first_ms": b"1700000000000",
        }
    )
    assert (trial.failures, trial.failure_kind) == (2, failures.OUT_OF_MEMORY)
    assert trial.last_attempt_end == trial_pb2.ATTEMPT_PREEMPTED
    assert (trial.checkpoint_seconds, trial.train_seconds) == (1.5, 30.0)
    assert trial.first_started_unix_ms == 1_700_000_000_000


def test_the_event_says_which_attempt_it_ended() -> None:
    trial = trial_pb2.Trial(trial_id="st-1-t1", attempt_id="a1")
    ended = Transition(
        trial=trial,
        changed=True,
        event_kind=events_pb2.TRIAL_LEASE_EXPIRED,
        ended_attempt_id="a1",
        attempt_end=trial_pb2.ATTEMPT_STALLED,
    )
    event = trial_event(ended, 5)
    assert (event.ended_attempt_id, event.attempt_end) == ("a1", trial_pb2.ATTEMPT_STALLED)
    started = trial_event(Transition(trial=trial, changed=True), 5)
    assert (started.ended_attempt_id, started.attempt_end) == ("", 0)
