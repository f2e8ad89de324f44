"""The contract every trial store backend keeps: the trial lifecycle (create, lease,
heartbeat, complete, fail), fencing of stale attempts, lease expiry, the study budget
and atomic multi-key updates. Parametrized over the backends, so a new one runs these
same tests by adding itself to ``BACKENDS``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from ladder import failures
from ladder.config import Settings
from ladder.errors import BudgetExhausted, Conflict, InvalidArgument, NotFound, StaleAttempt
from ladder.params import fill_params
from ladder.state import AttemptEnded, State, Transition, open_state, trial_event
from ladder.state.attempts import Counts
from ladder.study import OomPolicy
from ladder.testing import wait_for
from ladder.v1 import events_pb2, study_pb2, trial_pb2

pytestmark = pytest.mark.integration

BACKENDS: dict[str, Callable[[Settings], State]] = {"redis": open_state}

INFRA = failures.INFRASTRUCTURE


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, infra: Settings) -> Iterator[State]:
    state = BACKENDS[request.param](infra)
    yield state
    state.close()


def new_study(store: State, max_trials: int = 0, **policy: object) -> str:
    """A study with one parameter and ``policy`` as its trial_policy fields."""
    study_id = f"contract-{uuid.uuid4().hex[:8]}"
    config = study_pb2.StudyConfig(name="contract", metric="loss", max_trials=max_trials)
    config.space.parameters.add(name="x").float_range.high = 1.0
    config.scheduler.kind = study_pb2.NONE
    for name, value in policy.items():
        setattr(config.trial_policy, name, value)
    store.studies.create(study_pb2.Study(study_id=study_id, config=config, created_unix_ms=1))
    return study_id


def new_trials(store: State, study_id: str, count: int, max_trials: int = 0) -> list[str]:
    protos = []
    for seed in range(count):
        proto = trial_pb2.Trial(study_id=study_id, seed=seed)
        fill_params(proto.params, {"x": 0.5})
        protos.append(proto)
    made = store.trials.create_trials(study_id, protos, max_trials, 60, "contract")
    return [t.trial.trial_id for t in made]


def running_trial(store: State, lease_seconds: float = 30) -> tuple[str, str]:
    study_id = new_study(store)
    (trial_id,) = new_trials(store, study_id, 1)
    store.trials.start(trial_id, "a1", "w1", lease_seconds)
    return study_id, trial_id


def test_created_trials_are_suggested_numbered_and_pending(store: State) -> None:
    study_id = new_study(store)
    made = store.trials.create_trials(
        study_id, [trial_pb2.Trial(study_id=study_id, seed=s) for s in (7, 8)], 0, 60, "qr"
    )
    ids = [t.trial.trial_id for t in made]
    assert ids == [f"{study_id}-t1", f"{study_id}-t2"]
    assert all(t.changed and t.event_kind == events_pb2.TRIAL_SUGGESTED for t in made)
    stored = store.trials.get(ids[0])
    assert stored.state == trial_pb2.SUGGESTED and stored.seed == 7
    assert store.trials.pending(study_id) == sorted(ids)
    assert store.studies.get(study_id).trials_suggested == 2
    assert store.trials.get(f"{study_id}-t9") is None
    with pytest.raises(NotFound, match="not found"):
        store.trials.create_trials("no-such-study", [trial_pb2.Trial()], 0, 60, "qr")


def test_start_leases_the_trial_to_one_attempt(store: State) -> None:
    study_id = new_study(store)
    (trial_id,) = new_trials(store, study_id, 1)
    started = store.trials.start(trial_id, "a1", "w1", 30)
    assert started.changed and started.event_kind == events_pb2.TRIAL_STARTED
    assert started.trial.state == trial_pb2.RUNNING and started.trial.attempt_number == 1
    assert store.trials.lease_deadline_ms(trial_id) is not None
    again = store.trials.start(trial_id, "a1", "w1", 30)  # a retried StartTrial
    assert not again.changed and again.trial.attempt_number == 1
    with pytest.raises(Conflict, match="another live attempt"):
        store.trials.start(trial_id, "a2", "w2", 30)
    with pytest.raises(NotFound, match="not found"):
        store.trials.start(f"{study_id}-t9", "a1", "w1", 30)


def test_heartbeat_renews_the_lease_and_records_the_step(store: State) -> None:
    _, trial_id = running_trial(store, lease_seconds=30)
    first = store.trials.lease_deadline_ms(trial_id)
    assert store.trials.heartbeat(trial_id, "a1", 2, 600) is None  # no decision yet
    assert store.trials.lease_deadline_ms(trial_id) > first
    assert store.trials.get(trial_id).last_step == 2
    with pytest.raises(StaleAttempt, match="stale attempt"):
        store.trials.heartbeat(trial_id, "a2", 3, 30)
    with pytest.raises(NotFound, match="not found"):
        store.trials.heartbeat("no-such-t1", "a1", 1, 30)


def test_completion_is_idempotent_for_the_same_attempt_and_result(store: State) -> None:
    study_id, trial_id = running_trial(store)
    done = store.trials.complete(trial_id, "a1", 0.25, step=9)
    assert done.changed and done.event_kind == events_pb2.TRIAL_COMPLETED
    assert done.trial.state == trial_pb2.COMPLETED and done.trial.final_value == 0.25
    repeat = store.trials.complete(trial_id, "a1", 0.25, step=9)
    assert not repeat.changed and repeat.trial.final_value == 0.25
    assert store.studies.completed(study_id) == 1  # counted once
    with pytest.raises(Conflict, match="refusing a different result"):
        store.trials.complete(trial_id, "a1", 0.5)
    with pytest.raises(Conflict, match="it is COMPLETED"):
        store.trials.heartbeat(trial_id, "a1", 10, 30)
    with pytest.raises(InvalidArgument, match="finite"):
        store.trials.complete(trial_id, "a1", float("nan"))


def test_failures_retry_until_the_last_attempt_then_are_final(store: State) -> None:
    study_id, trial_id = running_trial(store)
    failed = store.trials.fail(trial_id, "a1", "disk", INFRA, max_failures=2)
    assert failed.changed and failed.event_kind == events_pb2.TRIAL_FAILED
    assert failed.trial.state == trial_pb2.RESUMABLE and failed.trial.failures == 1
    assert not store.trials.fail(trial_id, "a1", "disk", INFRA, max_failures=2).changed
    assert store.trials.resumable(study_id) == [trial_id]
    store.trials.start(trial_id, "a2", "w2", 30)
    final = store.trials.fail(trial_id, "a2", "disk", INFRA, max_failures=2)
    assert final.trial.state == trial_pb2.FAILED and final.trial.failures == 2
    assert final.reason == "attempt 2 failed (INFRASTRUCTURE; all 2 failures used): disk"
    assert trial_id not in store.trials.pending(study_id)
    assert store.trials.resumable(study_id) == []


def test_a_stale_attempt_is_refused_by_every_call(store: State) -> None:
    study_id = new_study(store)
    (trial_id,) = new_trials(store, study_id, 1)
    with pytest.raises(StaleAttempt, match="was never started"):
        store.trials.complete(trial_id, "a1", 0.5)
    store.trials.start(trial_id, "a1", "w1", 30)
    store.trials.fail(trial_id, "a1", "SIGTERM", failures.PREEMPTED)
    store.trials.start(trial_id, "a2", "w2", 30)
    refused: list[Callable[[], object]] = [
        lambda: store.trials.heartbeat(trial_id, "a1", 1, 30),
        lambda: store.trials.checkpoint(trial_id, "a1", "file:///tmp/c", 1, 30),
        lambda: store.trials.complete(trial_id, "a1", 0.5),
        lambda: store.trials.fail(trial_id, "a1", "late", INFRA),
        lambda: store.trials.prune(trial_id, "a1"),
        lambda: store.trials.start(trial_id, "a1", "w1", 30),  # an attempt never comes back
    ]
    for call in refused:
        with pytest.raises(StaleAttempt, match="'a2' replaced it"):
            call()
    assert store.trials.get(trial_id).attempt_id == "a2"


def test_an_expired_lease_makes_the_trial_resumable_from_its_checkpoint(store: State) -> None:
    study_id, trial_id = running_trial(store, lease_seconds=0.2)
    store.trials.checkpoint(trial_id, "a1", "file:///tmp/ckpt-3", 3, 0.2)
    expired = _expire(store, trial_id)
    assert expired.event_kind == events_pb2.TRIAL_LEASE_EXPIRED
    assert store.trials.get(trial_id).state == trial_pb2.RESUMABLE
    assert store.trials.lease_deadline_ms(trial_id) is None
    with pytest.raises(StaleAttempt, match="its lease expired"):
        store.trials.heartbeat(trial_id, "a1", 4, 30)
    (claimed,) = store.trials.claim_resumable(study_id, 5, 60)
    assert claimed.trial_id == trial_id and claimed.checkpoint_step == 3
    resumed = store.trials.start(trial_id, "a2", "w2", 30)
    assert resumed.trial.state == trial_pb2.RUNNING and resumed.trial.attempt_number == 2
    assert resumed.trial.checkpoint_uri == "file:///tmp/ckpt-3"
    assert "resumes the trial" in resumed.reason


def test_the_budget_hands_out_what_is_left_then_refuses(store: State) -> None:
    study_id = new_study(store, max_trials=3)
    assert len(new_trials(store, study_id, 2, max_trials=3)) == 2
    assert len(new_trials(store, study_id, 2, max_trials=3)) == 1  # only part fits
    with pytest.raises(BudgetExhausted, match="budget exhausted: 3 trials suggested"):
        new_trials(store, study_id, 1, max_trials=3)
    assert store.studies.get(study_id).trials_suggested == 3


def test_concurrent_starts_leave_exactly_one_attempt_holding_the_trial(store: State) -> None:
    study_id = new_study(store)
    (trial_id,) = new_trials(store, study_id, 1)

    def start(n: int) -> bool:
        try:
            return store.trials.start(trial_id, f"a{n}", f"w{n}", 30).changed
        except Conflict:
            return False

    with ThreadPoolExecutor(8) as pool:
        winners = sum(pool.map(start, range(16)))
    trial = store.trials.get(trial_id)
    assert winners == 1 and trial.attempt_number == 1 and trial.state == trial_pb2.RUNNING


def test_completion_updates_trial_lease_pending_set_and_study_together(store: State) -> None:
    study_id = new_study(store)
    trial_ids = new_trials(store, study_id, 6)
    for trial_id in trial_ids:
        store.trials.start(trial_id, "a1", "w1", 30)

    def complete_twice(trial_id: str) -> int:
        first = store.trials.complete(trial_id, "a1", 1.0)
        second = store.trials.complete(trial_id, "a1", 1.0)
        return int(first.changed) + int(second.changed)

    with ThreadPoolExecutor(6) as pool:
        changed = sum(pool.map(complete_twice, trial_ids * 2))
    assert changed == len(trial_ids)  # each trial completed exactly once
    assert store.studies.completed(study_id) == len(trial_ids)
    assert store.trials.pending(study_id) == []
    assert all(store.trials.lease_deadline_ms(t) is None for t in trial_ids)
    assert {t.state for t in store.trials.get_many(trial_ids)} == {trial_pb2.COMPLETED}


def _due_of(store: State, trial_id: str, older_than: float = 0) -> list[tuple[int, int, str]]:
    """(version, kind, reason) of the trial's events the outbox holds, as due."""
    return [
        (t.version, t.event_kind, t.reason)
        for t in store.trials.outbox_due(older_than, limit=10_000)
        if t.trial.trial_id == trial_id
    ]


def test_every_unacknowledged_event_of_a_trial_is_due_in_order(store: State) -> None:
    _, trial_id = running_trial(store)
    store.trials.checkpoint(trial_id, "a1", "file:///tmp/c1", 1, 30)
    store.trials.checkpoint(trial_id, "a1", "file:///tmp/c2", 2, 30)
    done = store.trials.complete(trial_id, "a1", 0.5, step=3)
    due = [t for t in store.trials.outbox_due(0, limit=10_000) if t.trial.trial_id == trial_id]
    assert [(t.version, t.event_kind) for t in due] == [
        (1, events_pb2.TRIAL_SUGGESTED),
        (2, events_pb2.TRIAL_STARTED),
        (3, events_pb2.TRIAL_CHECKPOINTED),
        (4, events_pb2.TRIAL_CHECKPOINTED),
        (5, events_pb2.TRIAL_COMPLETED),
    ]
    # Each event keeps the trial as its transition left it, and its time.
    states = [t.trial.state for t in due]
    assert states == [trial_pb2.SUGGESTED, *[trial_pb2.RUNNING] * 3, trial_pb2.COMPLETED]
    assert [t.trial.checkpoint_step for t in due[2:]] == [1, 2, 2]
    assert due[2].reason == "checkpoint at step 1.0" and not due[2].trial.has_final_value
    assert all(a.ts_ms <= b.ts_ms for a, b in zip(due, due[1:], strict=False))
    assert (due[-1].token, due[-1].ts_ms) == (done.token, done.ts_ms)
    # The new transition names the earlier unacknowledged events (but not the
    # suggestion, which suggest publishes itself) so its publisher sends them first.
    assert [t.version for t in done.earlier] == [2, 3, 4]


def test_acking_one_event_keeps_the_others_and_a_replayed_ack_changes_nothing(
    store: State,
) -> None:
    _, trial_id = running_trial(store)
    store.trials.checkpoint(trial_id, "a1", "file:///tmp/c1", 1, 30)
    store.trials.complete(trial_id, "a1", 0.5)
    before = _due_of(store, trial_id)
    assert [v for v, _, _ in before] == [1, 2, 3, 4]
    started = "{1}|{0}|{2}".format(*before[1])
    store.trials.ack(trial_id, started)
    rest = [before[0], *before[2:]]
    assert _due_of(store, trial_id) == rest
    store.trials.ack(trial_id, started)  # a replayed ack
    assert _due_of(store, trial_id) == rest
    for version, kind, reason in rest:
        store.trials.ack(trial_id, f"{kind}|{version}|{reason}")
    assert _due_of(store, trial_id) == []
    store.trials.ack(trial_id, started)
    assert _due_of(store, trial_id) == []


def test_the_relay_waits_for_the_oldest_unacknowledged_event(store: State) -> None:
    _, trial_id = running_trial(store)
    for version, kind, reason in _due_of(store, trial_id):
        store.trials.ack(trial_id, f"{kind}|{version}|{reason}")
    store.trials.checkpoint(trial_id, "a1", "file:///tmp/c1", 1, 30)
    # A fresh event belongs to its publisher for a while; the relay leaves it alone.
    assert _due_of(store, trial_id, older_than=60) == []
    assert [v for v, _, _ in _due_of(store, trial_id)] == [3]


def test_a_suggestion_suggest_did_not_publish_in_time_goes_before_the_next_event(
    store: State,
) -> None:
    store.trials.outbox_retry_seconds = 0.2
    study_id = new_study(store)
    (trial_id,) = new_trials(store, study_id, 1)
    time.sleep(0.3)  # suggest died before publishing its TRIAL_SUGGESTED
    started = store.trials.start(trial_id, "a1", "w1", 30)
    # Published ahead of TRIAL_STARTED, not left for the relay to send after it.
    assert [(t.version, t.event_kind) for t in started.earlier] == [
        (1, events_pb2.TRIAL_SUGGESTED)
    ]


def test_a_fresh_suggestion_is_left_to_suggest(store: State) -> None:
    store.trials.outbox_retry_seconds = 60
    study_id = new_study(store)
    (trial_id,) = new_trials(store, study_id, 1)
    assert store.trials.start(trial_id, "a1", "w1", 30).earlier == ()


# ------------------------------------------- failure classes, watchdog, wall clock


def _ends(transition: Transition) -> tuple[str, int]:
    """What the transition's TrialEvent says it ended: (attempt id, AttemptEnd)."""
    event = trial_event(transition, 0)
    return event.ended_attempt_id, event.attempt_end


@pytest.mark.parametrize(
    ("kind", "state", "counted", "end", "reason"),
    [
        (
            failures.INFRASTRUCTURE,
            trial_pb2.RESUMABLE,
            1,
            trial_pb2.ATTEMPT_FAILED,
            "attempt 1 failed (INFRASTRUCTURE, retried; 1 of 3 failures used): boom",
        ),
        (
            failures.USER_ERROR,
            trial_pb2.FAILED,
            1,
            trial_pb2.ATTEMPT_FAILED,
            "attempt 1 failed (USER_ERROR, not retried): boom",
        ),
        (
            failures.DIVERGED,
            trial_pb2.FAILED,
            1,
            trial_pb2.ATTEMPT_FAILED,
            "attempt 1 failed (DIVERGED, not retried): boom",
        ),
        (
            failures.OUT_OF_MEMORY,
            trial_pb2.RESUMABLE,
            1,
            trial_pb2.ATTEMPT_FAILED,
            "attempt 1 failed (OUT_OF_MEMORY, retried; 1 of 3 failures used): boom",
        ),
        (
            failures.TIMEOUT,
            trial_pb2.FAILED,
            1,
            trial_pb2.ATTEMPT_TIMED_OUT,
            "attempt 1 failed (TIMEOUT, not retried): boom",
        ),
        (
            failures.PREEMPTED,
            trial_pb2.RESUMABLE,
            0,
            trial_pb2.ATTEMPT_PREEMPTED,
            "preempted: boom; not counted (0 of 3 failures used)",
        ),
    ],
)
def test_fail_trial_per_kind(
    store: State, kind: int, state: int, counted: int, end: int, reason: str
) -> None:
    study_id, trial_id = running_trial(store)
    failed = store.trials.fail(trial_id, "a1", "boom", kind, max_failures=3)
    trial = failed.trial
    assert (failed.reason, trial.state, trial.failures) == (reason, state, counted)
    assert trial.failure_kind == (kind if counted else 0)
    assert trial.last_attempt_end == end and _ends(failed) == ("a1", end)
    queued = store.trials.resumable(study_id) == [trial_id]
    assert queued == (state == trial_pb2.RESUMABLE)
    assert (trial_id in store.trials.pending(study_id)) == queued
    assert store.trials.lease_deadline_ms(trial_id) is None


def test_a_trial_preempted_five_times_still_completes(store: State) -> None:
    study_id, trial_id = running_trial(store)
    for n in range(1, 6):
        attempt = f"a{n}"
        if n > 1:
            (claimed,) = store.trials.claim_resumable(study_id, 1, 60)
            assert claimed.trial_id == trial_id
            store.trials.start(trial_id, attempt, f"w{n}", 30)
        store.trials.checkpoint(trial_id, attempt, f"file:///c/{n}", n, 30)
        # max_failures=1: a single counted failure would fail it for good.
        handed_back = store.trials.fail(
            trial_id, attempt, "SIGTERM", failures.PREEMPTED, max_failures=1
        )
        assert handed_back.trial.state == trial_pb2.RESUMABLE
        assert handed_back.trial.failures == 0
        assert handed_back.reason == "preempted: SIGTERM; not counted (0 of 1 failures used)"
    store.trials.claim_resumable(study_id, 1, 60)
    resumed = store.trials.start(trial_id, "a6", "w6", 30)
    assert resumed.trial.attempt_number == 6 and resumed.trial.checkpoint_step == 5
    done = store.trials.complete(trial_id, "a6", 0.125)
    assert done.trial.state == trial_pb2.COMPLETED and done.trial.failures == 0
    assert done.trial.last_attempt_end == trial_pb2.ATTEMPT_COMPLETED


def test_out_of_memory_is_retried_once_or_infeasible(store: State) -> None:
    oom = failures.OUT_OF_MEMORY
    _, trial_id = running_trial(store)
    first = store.trials.fail(trial_id, "a1", "CUDA OOM", oom, OomPolicy.RETRY_ONCE, 5)
    assert first.trial.state == trial_pb2.RESUMABLE and first.trial.failure_kind == oom
    store.trials.start(trial_id, "a2", "w2", 30)
    second = store.trials.fail(trial_id, "a2", "CUDA OOM", oom, OomPolicy.RETRY_ONCE, 5)
    assert second.trial.state == trial_pb2.FAILED and second.trial.failures == 2
    assert second.reason == "attempt 2 failed (OUT_OF_MEMORY again, not retried): CUDA OOM"

    # A failure of another kind in between does not make a second OOM worth a retry.
    _, between = running_trial(store)
    store.trials.fail(between, "a1", "CUDA OOM", oom, OomPolicy.RETRY_ONCE, 5)
    store.trials.start(between, "a2", "w2", 30)
    store.trials.fail(between, "a2", "NCCL", INFRA, OomPolicy.RETRY_ONCE, 5)
    store.trials.start(between, "a3", "w3", 30)
    third = store.trials.fail(between, "a3", "CUDA OOM", oom, OomPolicy.RETRY_ONCE, 5)
    assert third.trial.state == trial_pb2.FAILED and third.trial.failures == 3
    assert third.reason == "attempt 3 failed (OUT_OF_MEMORY again, not retried): CUDA OOM"
    assert _counts(store, between).oom_failures == 2

    _, infeasible = running_trial(store)
    at_once = store.trials.fail(infeasible, "a1", "CUDA OOM", oom, OomPolicy.INFEASIBLE, 5)
    assert at_once.trial.state == trial_pb2.FAILED and at_once.trial.failure_kind == oom
    assert "OUT_OF_MEMORY: infeasible, not retried" in at_once.reason


def _counts(store: State, trial_id: str) -> Counts:
    """The trial's counts as its hash holds them."""
    raw = store.client.hmget(
        store.keys.trial(trial_id), "failures", "failure_kind", "oom_failures", "interruptions"
    )
    return Counts(*(int(value or 0) for value in raw))


def test_the_default_max_failures_is_evaluates(store: State) -> None:
    # TrialStore.fail without max_failures uses evaluate's --max-attempts default.
    _, trial_id = running_trial(store)
    for n in range(1, failures.MAX_FAILURES + 1):
        if n > 1:
            store.trials.start(trial_id, f"a{n}", "w", 30)
        failed = store.trials.fail(trial_id, f"a{n}", "disk", INFRA)
    assert failed.trial.state == trial_pb2.FAILED
    assert failed.trial.failures == failures.MAX_FAILURES
    assert f"all {failures.MAX_FAILURES} failures used" in failed.reason


def _swept(sweep: Callable[[], list[Transition]], trial_id: str, what: str) -> Transition:
    """The transition of ``trial_id`` a sweep (``expire_due``, ``time_out_due``) makes,
    waited for."""
    (found,) = wait_for(
        lambda: [t for t in sweep() if t.trial.trial_id == trial_id], 10, what, every=0.05
    )
    return found


def _expire(store: State, trial_id: str) -> Transition:
    return _swept(store.trials.expire_due, trial_id, "the lease to expire")


def _stall(store: State, trial_id: str, attempt: str) -> Transition:
    """Heartbeats of ``attempt`` that never advance, until the watchdog (0.3 s) ends it."""

    def stalled() -> AttemptEnded | None:
        try:
            store.trials.heartbeat(trial_id, attempt, 1, 30, stall_timeout_seconds=0.3)
        except AttemptEnded as ended:
            return ended
        return None

    return wait_for(stalled, 10, "the watchdog", every=0.05).transition


# The ways an attempt is interrupted: each ends it and returns the transition.
INTERRUPTIONS: dict[str, Callable[[State, str, str], Transition]] = {
    "preempted": lambda store, trial_id, attempt: store.trials.fail(
        trial_id, attempt, "SIGTERM", failures.PREEMPTED
    ),
    "lease expired": lambda store, trial_id, attempt: _expire(store, trial_id),
    "stalled": _stall,
}


@pytest.mark.parametrize("last", sorted(INTERRUPTIONS))
def test_interruptions_beyond_max_interruptions_fail_the_trial(store: State, last: str) -> None:
    """A trial that loses its worker every time (preempted, lease expired, stalled:
    never a failure) is FAILED as INFRASTRUCTURE once interrupted more than the
    study's max_interruptions times, whichever way the last one happened."""
    study_id = new_study(store, max_interruptions=2)
    (trial_id,) = new_trials(store, study_id, 1)
    ways = [name for name in sorted(INTERRUPTIONS) if name != last] + [last]
    for n, way in enumerate(ways, start=1):
        attempt = f"a{n}"
        # A short lease only where the lease is meant to expire.
        store.trials.start(trial_id, attempt, "w", 0.2 if way == "lease expired" else 30)
        ended = INTERRUPTIONS[way](store, trial_id, attempt)
        assert _counts(store, trial_id).interruptions == n
        assert ended.trial.failures == 0
        if n < 3:
            assert ended.trial.state == trial_pb2.RESUMABLE, (way, ended.reason)
            store.trials.claim_resumable(study_id, 1, 60)
    assert ended.event_kind == events_pb2.TRIAL_FAILED
    assert ended.trial.state == trial_pb2.FAILED
    assert ended.trial.failure_kind == failures.INFRASTRUCTURE
    assert ended.reason.endswith(
        "FAILED (INFRASTRUCTURE): interrupted 3 times, more than max_interruptions (2)"
    ), ended.reason
    end = {
        "preempted": trial_pb2.ATTEMPT_PREEMPTED,
        "lease expired": trial_pb2.ATTEMPT_LEASE_EXPIRED,
        "stalled": trial_pb2.ATTEMPT_STALLED,
    }[last]
    assert _ends(ended) == ("a3", end)
    assert store.trials.pending(study_id) == [] and store.trials.resumable(study_id) == []
    assert store.trials.lease_deadline_ms(trial_id) is None


def test_unlimited_interruptions_never_fail_the_trial(store: State) -> None:
    study_id = new_study(store, max_interruptions=-1)
    (trial_id,) = new_trials(store, study_id, 1)
    for n in range(1, 31):  # more than the default 25
        store.trials.start(trial_id, f"a{n}", "w", 30)
        handed_back = store.trials.fail(trial_id, f"a{n}", "SIGTERM", failures.PREEMPTED)
        assert handed_back.trial.state == trial_pb2.RESUMABLE
    assert _counts(store, trial_id).interruptions == 30


def test_lease_expiry_and_pause_end_the_attempt_without_counting(store: State) -> None:
    _, trial_id = running_trial(store, lease_seconds=0.2)
    expired = _expire(store, trial_id)
    assert _ends(expired) == ("a1", trial_pb2.ATTEMPT_LEASE_EXPIRED)
    assert expired.trial.failures == 0 and "not counted" in expired.reason
    started = store.trials.start(trial_id, "a2", "w2", 30)
    assert _ends(started) == ("", 0)  # a start ends no attempt
    checkpointed = store.trials.checkpoint(trial_id, "a2", "file:///c/1", 1, 30)
    assert _ends(checkpointed) == ("", 0)
    store.trials.apply_decision(
        events_pb2.Decision(trial_id=trial_id, action=events_pb2.PAUSE, rung=0)
    )
    paused = store.trials.pause(trial_id, "a2", 1, 0)
    assert _ends(paused) == ("a2", trial_pb2.ATTEMPT_PAUSED) and paused.trial.failures == 0


def test_complete_and_prune_end_their_attempt(store: State) -> None:
    _, done_id = running_trial(store)
    done = store.trials.complete(done_id, "a1", 0.5)
    assert _ends(done) == ("a1", trial_pb2.ATTEMPT_COMPLETED)
    _, pruned_id = running_trial(store)
    pruned = store.trials.prune(pruned_id, "a1", step=3)
    assert _ends(pruned) == ("a1", trial_pb2.ATTEMPT_PRUNED)
    assert pruned.trial.last_attempt_end == trial_pb2.ATTEMPT_PRUNED


def test_the_watchdog_ends_an_attempt_that_makes_no_progress(store: State) -> None:
    study_id, trial_id = running_trial(store)
    stall = 0.4
    # Steps that advance keep the attempt alive however long it runs.
    for step in (1, 2, 3):
        store.trials.heartbeat(trial_id, "a1", step, 30, stall_timeout_seconds=stall)

    def stalled() -> AttemptEnded | None:
        try:
            store.trials.heartbeat(trial_id, "a1", 3, 30, stall_timeout_seconds=stall)
        except AttemptEnded as ended:
            return ended
        return None

    ended = wait_for(stalled, 10, "the watchdog", every=0.05)
    transition = ended.transition
    assert transition.event_kind == events_pb2.TRIAL_LEASE_EXPIRED
    assert _ends(transition) == ("a1", trial_pb2.ATTEMPT_STALLED)
    assert transition.trial.state == trial_pb2.RESUMABLE and transition.trial.failures == 0
    assert transition.reason.startswith("stalled: attempt a1 made no step progress for ")
    assert "furthest step 3.0" in transition.reason and "not counted" in transition.reason
    assert str(ended).startswith("stale attempt: 'a1' no longer holds trial")
    assert store.trials.resumable(study_id) == [trial_id]
    assert store.trials.lease_deadline_ms(trial_id) is None
    with pytest.raises(StaleAttempt, match="its lease expired"):
        store.trials.heartbeat(trial_id, "a1", 4, 30, stall_timeout_seconds=stall)
    # The next attempt redoes steps from its checkpoint: any step it reports is progress.
    store.trials.start(trial_id, "a2", "w2", 30)
    assert store.trials.heartbeat(trial_id, "a2", 1, 30, stall_timeout_seconds=stall) is None
    # No watchdog (None): however long without progress, the lease is renewed.
    assert store.trials.heartbeat(trial_id, "a2", 1, 30, stall_timeout_seconds=None) is None


def _redis_ms(store: State) -> int:
    seconds, micros = store.client.time()
    return seconds * 1000 + micros // 1000


def test_running_time_runs_out_at_a_heartbeat(store: State) -> None:
    study_id = new_study(store)
    (trial_id,) = new_trials(store, study_id, 1)
    started = store.trials.start(trial_id, "a1", "w1", 30, max_trial_seconds=0.3)
    assert started.trial.first_started_unix_ms > 0

    def timed_out() -> AttemptEnded | None:
        try:
            store.trials.heartbeat(trial_id, "a1", None, 30)
        except AttemptEnded as ended:
            return ended
        return None

    transition = wait_for(timed_out, 10, "the running time to run out", every=0.05).transition
    assert transition.event_kind == events_pb2.TRIAL_FAILED
    assert _ends(transition) == ("a1", trial_pb2.ATTEMPT_TIMED_OUT)
    trial = transition.trial
    assert (trial.state, trial.failure_kind, trial.failures) == (
        trial_pb2.FAILED,
        failures.TIMEOUT,
        1,
    )
    assert transition.reason.startswith("timed out: ")
    assert "of running time over 1 attempts" in transition.reason
    assert trial_id not in store.trials.pending(study_id)
    assert store.client.zscore(store.keys.deadlines, trial_id) is None


def test_running_time_runs_out_from_the_sweeper(store: State) -> None:
    study_id = new_study(store)
    (trial_id,) = new_trials(store, study_id, 1)
    store.trials.start(trial_id, "a1", "w1", 30, max_trial_seconds=0.3)
    timed_out = _swept(store.trials.time_out_due, trial_id, "the sweeper's running-time check")
    assert timed_out.trial.state == trial_pb2.FAILED
    assert timed_out.trial.failure_kind == failures.TIMEOUT
    assert _ends(timed_out) == ("a1", trial_pb2.ATTEMPT_TIMED_OUT)
    assert store.trials.resumable(study_id) == [] and store.trials.pending(study_id) == []
    with pytest.raises(Conflict, match="it is FAILED"):
        store.trials.start(trial_id, "a2", "w2", 30)


def test_only_running_time_counts_toward_max_trial_seconds(store: State) -> None:
    """Time PAUSED or queued RESUMABLE never counts: an attempt's deadline is what
    max_trial_seconds leaves after the running time of the trial's earlier attempts."""
    limit = 0.8
    study_id = new_study(store)
    (trial_id,) = new_trials(store, study_id, 1)
    store.trials.start(trial_id, "a1", "w1", 30, max_trial_seconds=limit)
    # The first attempt runs a measurable while (a local Redis answers within the same
    # millisecond): the second must be left less than the whole limit.
    started_ms = _redis_ms(store)
    wait_for(lambda: _redis_ms(store) > started_ms + 20, 10, "the first attempt to run", every=0.01)
    store.trials.apply_decision(
        events_pb2.Decision(trial_id=trial_id, action=events_pb2.PAUSE, rung=0)
    )
    store.trials.pause(trial_id, "a1", 1, 0)
    assert store.client.zscore(store.keys.deadlines, trial_id) is None
    first_ms = store.trials.get(trial_id).first_started_unix_ms
    # PAUSED for longer than max_trial_seconds, then promoted and queued as long again.
    wait_for(
        lambda: _redis_ms(store) > first_ms + limit * 1000 + 100, 10, "time to pass", every=0.05
    )
    assert not [t for t in store.trials.time_out_due() if t.trial.trial_id == trial_id]
    status, _ = store.trials.apply_decision(
        events_pb2.Decision(trial_id=trial_id, action=events_pb2.PROMOTE, rung=0)
    )
    assert status == "RESUMED"
    queued_ms = _redis_ms(store)
    wait_for(
        lambda: _redis_ms(store) > queued_ms + limit * 1000 + 100, 10, "time to pass", every=0.05
    )
    assert not [t for t in store.trials.time_out_due() if t.trial.trial_id == trial_id]
    assert store.trials.get(trial_id).state == trial_pb2.RESUMABLE
    # The second attempt gets what the first left.
    store.trials.start(trial_id, "a2", "w2", 30, max_trial_seconds=limit)
    attempt_ms, run_ms = (
        int(v) for v in store.client.hmget(store.keys.trial(trial_id), "attempt_ms", "run_ms")
    )
    assert 0 < run_ms < limit * 1000
    deadline = store.client.zscore(store.keys.deadlines, trial_id)
    assert deadline == attempt_ms + limit * 1000 - run_ms
    store.trials.heartbeat(trial_id, "a2", 2, 30)  # still within it: no AttemptEnded
    timed_out = _swept(store.trials.time_out_due, trial_id, "the second attempt to use up the rest")
    assert _ends(timed_out) == ("a2", trial_pb2.ATTEMPT_TIMED_OUT)
    run_ms = int(store.client.hget(store.keys.trial(trial_id), "run_ms"))
    assert limit * 1000 <= run_ms < limit * 1000 + 2000


def test_a_sweep_after_a_gap_longer_than_a_lease_extends_the_leases_first(
    store: State,
) -> None:
    """evaluate away for longer than a lease: no worker could renew, so the first pass
    after it extends the leases (to a lease from now) before anything expires."""
    _, trial_id = running_trial(store, lease_seconds=0.2)
    lease_ms = store.trials.lease_deadline_ms(trial_id)
    store.client.set(store.keys.last_sweep, _redis_ms(store) - 60_000)
    wait_for(lambda: _redis_ms(store) > lease_ms, 10, "the lease to run out", every=0.05)
    since, extended = store.trials.sweep_grace(lease_seconds=5)
    assert since is not None and since >= 60 and extended >= 1
    extended_ms = store.trials.lease_deadline_ms(trial_id)
    assert extended_ms >= _redis_ms(store) + 4000
    lease_until = store.client.hget(store.keys.trial(trial_id), "lease_until")
    assert int(lease_until) == extended_ms
    assert trial_id not in [t.trial.trial_id for t in store.trials.expire_due()]
    # The worker's heartbeat within that grace keeps its trial.
    store.trials.heartbeat(trial_id, "a1", 2, 30)
    assert store.trials.get(trial_id).state == trial_pb2.RUNNING
    # Passes a lease apart or closer extend nothing.
    since, extended = store.trials.sweep_grace(lease_seconds=5)
    assert since is not None and since < 5 and extended == 0


def test_checkpoint_overhead_adds_up_over_attempts(store: State) -> None:
    study_id, trial_id = running_trial(store)
    store.trials.checkpoint(trial_id, "a1", "file:///c/1", 1, 30, 0.5, 10.0)
    store.trials.checkpoint(trial_id, "a1", "file:///c/1", 1, 30, 0.5, 10.0)  # a retry
    store.trials.fail(trial_id, "a1", "SIGTERM", failures.PREEMPTED)
    store.trials.start(trial_id, "a2", "w2", 30)
    after = store.trials.checkpoint(trial_id, "a2", "file:///c/2", 2, 30, 0.25, 20.0).trial
    assert (after.checkpoint_seconds, after.train_seconds) == (0.75, 30.0)
    for name, value in (("save_seconds", -1.0), ("train_seconds", float("nan"))):
        spent = {"save_seconds": 0.0, "train_seconds": 0.0, name: value}
        with pytest.raises(InvalidArgument, match=f"{name} must be finite and >= 0"):
            store.trials.checkpoint(trial_id, "a2", "file:///c/3", 3, 30, **spent)
    assert store.trials.get(trial_id).checkpoint_step == 2


def test_fail_refuses_an_unknown_kind(store: State) -> None:
    _, trial_id = running_trial(store)
    with pytest.raises(InvalidArgument, match="kind: unknown failure kind 99"):
        store.trials.fail(trial_id, "a1", "?", 99)
    assert store.trials.get(trial_id).state == trial_pb2.RUNNING
