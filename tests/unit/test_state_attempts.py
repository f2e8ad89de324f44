"""What a failed attempt does to its trial (``ladder.state.attempts``): the table of
``ladder.failures`` applied to the trial's failure count, with the reason it gives."""

from __future__ import annotations

import pytest
from ladder import failures
from ladder.state import Transition, trial_event, trial_from_hash
from ladder.state.attempts import FailOutcome, end_name, fail_outcome
from ladder.study import OomPolicy
from ladder.v1 import events_pb2, trial_pb2


def outcome(kind: int, failures_so_far: int = 0, previous: int = 0, **kw: object) -> FailOutcome:
    args = {
        "oom": OomPolicy.RETRY_ONCE,
        "failures": failures_so_far,
        "previous": previous,
        "max_failures": 3,
        "attempt_number": failures_so_far + 1,
        **kw,
    }
    return fail_outcome(kind, "why", **args)


def test_preemption_never_counts_and_never_fails_the_trial() -> None:
    # Even with every failure used (evaluate's --max-attempts lowered since), a hand-back
    # after SIGTERM leaves the trial resumable.
    for so_far in (0, 2, 3, 7):
        handed_back = outcome(failures.PREEMPTED, so_far, previous=failures.INFRASTRUCTURE)
        assert not handed_back.counts and not handed_back.final
        assert handed_back.failures == so_far
        assert handed_back.failure_kind == failures.INFRASTRUCTURE  # the last counted one
        assert handed_back.attempt_end == trial_pb2.ATTEMPT_PREEMPTED
    reason = outcome(failures.PREEMPTED, 1).reason
    assert reason == "preempted: why; not counted (1 of 3 failures used)"


def test_retried_failures_count_until_max_failures() -> None:
    first = outcome(failures.INFRASTRUCTURE)
    assert (first.counts, first.final, first.failures) == (True, False, 1)
    assert first.reason == "attempt 1 failed (INFRASTRUCTURE, retried; 1 of 3 failures used): why"
    last = outcome(failures.INFRASTRUCTURE, 2)
    assert (last.final, last.failures, last.attempt_end) == (True, 3, trial_pb2.ATTEMPT_FAILED)
    assert last.reason == "attempt 3 failed (INFRASTRUCTURE; all 3 failures used): why"


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
    assert (failed.counts, failed.final, failed.failures, failed.failure_kind) == (
        True,
        True,
        1,
        kind,
    )
    assert failed.attempt_end == end and failed.reason == f"attempt 1 failed ({says}): why"


def test_out_of_memory_retries_once_then_is_infeasible() -> None:
    oom = failures.OUT_OF_MEMORY
    assert not outcome(oom).final
    again = outcome(oom, 1, previous=oom)
    assert again.final
    assert again.reason == "attempt 2 failed (OUT_OF_MEMORY again, not retried): why"
    # Another class in between: the next out-of-memory is retried again.
    assert not outcome(oom, 2, previous=failures.INFRASTRUCTURE, max_failures=5).final
    infeasible = outcome(oom, oom=OomPolicy.INFEASIBLE)
    assert infeasible.final and "OUT_OF_MEMORY: infeasible, not retried" in infeasible.reason


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
