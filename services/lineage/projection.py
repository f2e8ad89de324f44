"""How trial events fold into one row per trial and one row per attempt.

Every field is merged by a rule that does not depend on arrival order (max or
min over a total order, or "first non-empty" for values all events agree on),
so ingesting the same events again, or in another order, yields the same rows.

A trial's state is the state of its newest event, where "newer" follows the
lifecycle rather than the clock alone:

1. a terminal state (COMPLETED / PRUNED / FAILED) beats any other,
2. then a later attempt beats an earlier one (attempt_number),
3. within an attempt SUGGESTED < RUNNING < PAUSED < RESUMABLE (a promoted
   PAUSED trial becomes RESUMABLE in the same attempt),
4. then the event timestamp.

So an old TRIAL_STARTED replayed after TRIAL_COMPLETED cannot regress the trial.

An attempt's outcome is how it ended: the event that ended it names it
(``ended_attempt_id``, ``attempt_end``: completed, pruned, paused, preempted,
lease_expired, stalled, failed, timed_out), with that event's reason and the failure
class. Events of an evaluate that did not record attempt ends are read by their kind.
The trial's failure count and checkpoint overhead only grow, so the largest wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ladder.state.attempts import end_name, failure_of_end
from ladder.v1 import events_pb2, trial_pb2

TS = trial_pb2.TrialState
KIND = events_pb2.TrialEventKind

TERMINAL_STATES = frozenset({TS.Value("COMPLETED"), TS.Value("PRUNED"), TS.Value("FAILED")})

# Lifecycle phase within one attempt (see rule 3 above).
_PHASE = {
    TS.Value("TRIAL_STATE_UNSPECIFIED"): 0,
    TS.Value("SUGGESTED"): 1,
    TS.Value("RUNNING"): 2,
    TS.Value("PAUSED"): 3,
    TS.Value("RESUMABLE"): 4,
    TS.Value("COMPLETED"): 5,
    TS.Value("PRUNED"): 5,
    TS.Value("FAILED"): 5,
}

# The state an event implies when its trial snapshot does not carry one.
_KIND_STATE = {
    KIND.Value("TRIAL_SUGGESTED"): TS.Value("SUGGESTED"),
    KIND.Value("TRIAL_STARTED"): TS.Value("RUNNING"),
    KIND.Value("TRIAL_CHECKPOINTED"): TS.Value("RUNNING"),
    KIND.Value("TRIAL_COMPLETED"): TS.Value("COMPLETED"),
    KIND.Value("TRIAL_PRUNED"): TS.Value("PRUNED"),
    KIND.Value("TRIAL_FAILED"): TS.Value("FAILED"),
    KIND.Value("TRIAL_LEASE_EXPIRED"): TS.Value("RESUMABLE"),
    KIND.Value("TRIAL_PAUSED"): TS.Value("PAUSED"),
    KIND.Value("TRIAL_PROMOTED"): TS.Value("RESUMABLE"),
}

# What an event without attempt_end says about the attempt it belongs to (events of an
# evaluate that did not record attempt ends); ended outcomes beat "running", later ones
# beat earlier ones.
_KIND_OUTCOME = {
    KIND.Value("TRIAL_STARTED"): "running",
    KIND.Value("TRIAL_CHECKPOINTED"): "running",
    KIND.Value("TRIAL_COMPLETED"): "completed",
    KIND.Value("TRIAL_PRUNED"): "pruned",
    KIND.Value("TRIAL_FAILED"): "failed",
    KIND.Value("TRIAL_LEASE_EXPIRED"): "lease_expired",
    KIND.Value("TRIAL_PAUSED"): "paused",
}

# Keys are fixed-width strings so they compare the same in Python and SQL.
EMPTY_KEY = ""


def event_state(event: events_pb2.TrialEvent) -> int:
    """The trial state after ``event``: the snapshot's, else implied by the kind."""
    if event.trial.state != TS.Value("TRIAL_STATE_UNSPECIFIED"):
        return event.trial.state
    return _KIND_STATE.get(event.kind, TS.Value("TRIAL_STATE_UNSPECIFIED"))


def progress_key(state: int, attempt_number: int, ts_ms: int) -> str:
    terminal = 1 if state in TERMINAL_STATES else 0
    return f"{terminal}{max(attempt_number, 0):010d}{_PHASE.get(state, 0)}{max(ts_ms, 0):020d}"


def _step_key(step: float, ts_ms: int) -> str:
    # Steps are >= 0; 6 decimals are plenty for an epoch / step axis.
    return f"{max(step, 0.0):024.6f}{max(ts_ms, 0):020d}"


@dataclass(frozen=True)
class TrialRow:
    trial_id: str
    study_id: str
    params_pb: bytes | None
    seed: int
    state: int
    state_key: str
    has_final_value: bool
    final_value: float
    final_key: str
    checkpoint_uri: str
    checkpoint_key: str
    last_step: float
    algorithm: str
    predicted_mean: float
    predicted_std: float
    suggested_ts_ms: int | None
    first_ts_ms: int
    terminal_ts_ms: int
    failures: int
    failure_kind: int
    checkpoint_seconds: float
    train_seconds: float


@dataclass(frozen=True)
class AttemptRow:
    trial_id: str
    attempt_id: str
    attempt_number: int
    worker_id: str
    hostname: str
    environment: str
    outcome: str
    outcome_key: str
    started_ms: int
    ended_ms: int
    checkpoint_uri: str
    checkpoint_key: str
    attempt_end: int
    end_reason: str
    failure_kind: int


def _params_pb(trial: trial_pb2.Trial) -> bytes | None:
    if not trial.params:
        return None
    return trial_pb2.Trial(params=trial.params).SerializeToString(deterministic=True)


def new_trial(trial_id: str, study_id: str) -> TrialRow:
    return TrialRow(
        trial_id=trial_id,
        study_id=study_id,
        params_pb=None,
        seed=0,
        state=TS.Value("TRIAL_STATE_UNSPECIFIED"),
        state_key=EMPTY_KEY,
        has_final_value=False,
        final_value=math.nan,
        final_key=EMPTY_KEY,
        checkpoint_uri="",
        checkpoint_key=EMPTY_KEY,
        last_step=0.0,
        algorithm="",
        predicted_mean=0.0,
        predicted_std=0.0,
        suggested_ts_ms=None,
        first_ts_ms=0,
        terminal_ts_ms=0,
        failures=0,
        failure_kind=0,
        checkpoint_seconds=0.0,
        train_seconds=0.0,
    )


def merge_trial(row: TrialRow | None, event: events_pb2.TrialEvent) -> TrialRow:
    """Fold one trial event into the trial's row (order-independent)."""
    trial = event.trial
    current = row or new_trial(trial.trial_id, trial.study_id)
    changes: dict[str, object] = {}
    state = event_state(event)
    key = progress_key(state, trial.attempt_number, event.ts_ms)

    if current.params_pb is None and trial.params:
        changes["params_pb"] = _params_pb(trial)
    if not current.seed and trial.seed:
        changes["seed"] = trial.seed
    if not current.study_id and trial.study_id:
        changes["study_id"] = trial.study_id
    if key > current.state_key:
        changes.update(state=state, state_key=key)
        changes["terminal_ts_ms"] = event.ts_ms if state in TERMINAL_STATES else 0
    if trial.has_final_value and key > current.final_key:
        changes.update(has_final_value=True, final_value=trial.final_value, final_key=key)
    if trial.checkpoint_uri:
        checkpoint_key = _step_key(trial.checkpoint_step, event.ts_ms)
        if checkpoint_key > current.checkpoint_key:
            changes.update(checkpoint_uri=trial.checkpoint_uri, checkpoint_key=checkpoint_key)
    if trial.last_step > current.last_step:
        changes["last_step"] = trial.last_step
    if trial.failures > current.failures:
        changes.update(failures=trial.failures, failure_kind=trial.failure_kind)
    for name in ("checkpoint_seconds", "train_seconds"):
        if getattr(trial, name) > getattr(current, name):
            changes[name] = getattr(trial, name)
    if event.kind == KIND.Value("TRIAL_SUGGESTED") and (
        current.suggested_ts_ms is None or event.ts_ms < current.suggested_ts_ms
    ):
        # The first suggestion is the one the surrogate made; a resumed trial
        # handed out again keeps it.
        changes.update(
            algorithm=event.algorithm,
            predicted_mean=event.predicted_mean,
            predicted_std=event.predicted_std,
            suggested_ts_ms=event.ts_ms,
        )
    if event.ts_ms and (not current.first_ts_ms or event.ts_ms < current.first_ts_ms):
        changes["first_ts_ms"] = event.ts_ms
    return replace(current, **changes) if changes else current


def _outcome(event: events_pb2.TrialEvent) -> str | None:
    """What ``event`` says about its trial's current attempt: ``running``, how it ended,
    or None (nothing)."""
    trial = event.trial
    if event.ended_attempt_id:
        return end_name(event.attempt_end) if event.ended_attempt_id == trial.attempt_id else None
    outcome = _KIND_OUTCOME.get(event.kind)
    if outcome != "running" and trial.last_attempt_end:
        # Its evaluate records attempt ends, and this event ended none (a claim expired,
        # a waiting trial ran out of wall clock): the last attempt ended earlier.
        return None
    return outcome


def merge_attempt(row: AttemptRow | None, event: events_pb2.TrialEvent) -> AttemptRow | None:
    """Fold one trial event into its attempt's row; None if it has no attempt."""
    trial = event.trial
    outcome = _outcome(event)
    if outcome is None or not trial.attempt_id:
        return None
    current = row or AttemptRow(
        trial_id=trial.trial_id,
        attempt_id=trial.attempt_id,
        attempt_number=trial.attempt_number,
        worker_id="",
        hostname="",
        environment="",
        outcome="",
        outcome_key=EMPTY_KEY,
        started_ms=0,
        ended_ms=0,
        checkpoint_uri="",
        checkpoint_key=EMPTY_KEY,
        attempt_end=0,
        end_reason="",
        failure_kind=0,
    )
    changes: dict[str, object] = {}
    for name, value in (
        ("worker_id", trial.worker_id),
        ("hostname", event.hostname),
        ("environment", event.environment),
    ):
        if value and not getattr(current, name):
            changes[name] = value
    if trial.attempt_number and not current.attempt_number:
        changes["attempt_number"] = trial.attempt_number
    ended = outcome != "running"
    outcome_key = f"{int(ended)}{max(event.ts_ms, 0):020d}"
    if outcome_key > current.outcome_key:
        changes.update(
            outcome=outcome,
            outcome_key=outcome_key,
            ended_ms=event.ts_ms if ended else 0,
            attempt_end=event.attempt_end if event.ended_attempt_id else 0,
            end_reason=event.reason if ended else "",
            failure_kind=(
                failure_of_end(event.attempt_end, trial.failure_kind)
                if event.ended_attempt_id
                else 0
            ),
        )
    if event.kind == KIND.Value("TRIAL_STARTED") and (
        not current.started_ms or 0 < event.ts_ms < current.started_ms
    ):
        changes["started_ms"] = event.ts_ms
    if trial.checkpoint_uri:
        checkpoint_key = _step_key(trial.checkpoint_step, event.ts_ms)
        if checkpoint_key > current.checkpoint_key:
            changes.update(checkpoint_uri=trial.checkpoint_uri, checkpoint_key=checkpoint_key)
    return replace(current, **changes) if changes else current
