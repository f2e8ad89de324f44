"""The study lifecycle controls' rules (``ladder.lifecycle``): which state each action
may leave, what Suggest and a heartbeat answer in each state, and UpdateStudy's checks."""

from __future__ import annotations

import pytest
from ladder import lifecycle
from ladder.cli_study_file import StudyFileError, parse
from ladder.errors import AtCapacity, Conflict, InvalidArgument, StudyPaused
from ladder.lifecycle import (
    ACTIVE,
    CANCELLED,
    COMPLETED,
    PAUSED,
    RULES,
    STOPPED,
    Action,
)
from ladder.v1 import events_pb2

STATES = (ACTIVE, STOPPED, PAUSED, CANCELLED, COMPLETED)

# action -> the states it may leave (the target answers unchanged).
ALLOWED = {
    Action.STOP: {ACTIVE, STOPPED, PAUSED},
    Action.RESUME: {ACTIVE, STOPPED, PAUSED},
    Action.PAUSE: {ACTIVE, STOPPED, PAUSED},
    Action.CANCEL: {ACTIVE, STOPPED, PAUSED, CANCELLED},
    Action.COMPLETE: {ACTIVE, STOPPED},
    Action.BREAK: {ACTIVE},
}


@pytest.mark.parametrize("action", list(Action))
def test_each_action_leaves_only_its_states(action: Action) -> None:
    assert set(RULES[action].allowed_from) == ALLOWED[action]
    # COMPLETED and CANCELLED are final: nothing but a repeated cancel leaves them.
    assert COMPLETED not in RULES[action].allowed_from
    assert (CANCELLED in RULES[action].allowed_from) == (action is Action.CANCEL)


def test_refusals_say_why_the_state_is_final() -> None:
    assert str(lifecycle.refusal(Action.PAUSE, "s", CANCELLED)) == (
        "study 's' is cancelled: it cannot be paused (cancelled for good)")
    assert str(lifecycle.refusal(Action.CANCEL, "s", COMPLETED)) == (
        "study 's' is completed: it cannot be cancelled (its budget is spent and every "
        "trial ended)")
    assert lifecycle.state_name(PAUSED) == "paused"


def test_what_suggest_refuses_by_state() -> None:
    refusals = {state: lifecycle.refusal_to_suggest("s", state) for state in STATES}
    # ACTIVE hands out; STOPPED hands out resumable trials first; COMPLETED is the
    # budget's refusal.
    assert refusals[ACTIVE] is refusals[STOPPED] is refusals[COMPLETED] is None
    assert isinstance(refusals[PAUSED], StudyPaused)
    assert "`ladder study resume s`" in str(refusals[PAUSED])
    assert lifecycle.paused_refusal(str(refusals[PAUSED]))
    assert not lifecycle.paused_refusal(str(refusals[CANCELLED]))
    assert str(refusals[CANCELLED]) == "study 's' is cancelled: it hands out no trials (for good)"


def test_at_capacity_names_the_limit_and_the_way_out() -> None:
    refused = lifecycle.at_capacity("s", 3, 3)
    assert isinstance(refused, AtCapacity)
    assert "max_parallel_trials is 3" in str(refused)
    assert "`ladder study update s --parallelism N`" in str(refused)


def decision(action: int, rung: int = 0) -> events_pb2.Decision:
    return events_pb2.Decision(trial_id="s-t1", action=action, rung=rung, resource=9)


def test_a_paused_study_answers_pause_unless_a_stop_stands() -> None:
    pause = lifecycle.verdict("s", "s-t1", PAUSED, None)
    assert pause is not None
    assert (pause.action, pause.rung, pause.resource, pause.scheduler) == (
        events_pb2.PAUSE, 0, 0.0, "lifecycle")
    # The stored rung is kept: a scheduler PAUSE there stays the scheduler's.
    promoted = lifecycle.verdict("s", "s-t1", PAUSED, decision(events_pb2.PROMOTE, 2))
    assert promoted is not None and (promoted.action, promoted.rung) == (events_pb2.PAUSE, 2)
    stop = decision(events_pb2.STOP, 1)
    assert lifecycle.verdict("s", "s-t1", PAUSED, stop) is stop
    for state in (ACTIVE, STOPPED, CANCELLED):
        assert lifecycle.verdict("s", "s-t1", state, None) is None
        stored = decision(events_pb2.CONTINUE, 1)
        assert lifecycle.verdict("s", "s-t1", state, stored) is stored


@pytest.mark.parametrize(
    ("max_trials", "max_parallel", "suggested", "error"),
    [
        (None, None, 0, "set max_trials, max_parallel_trials, max_wall_clock_seconds, "
                        "max_trial_hours and / or max_gpu_hours to change"),
        (-1, None, 0, "max_trials must be >= 0 (0 = unbounded; got -1)"),
        (None, -3, 0, "max_parallel_trials must be >= 0 (0 = unbounded; got -3)"),
        (4, None, 5, "max_trials 4 is below the 5 trials already handed out (at least 5, "
                     "or 0 = unbounded)"),
    ],
)
def test_update_refuses_bad_limits(
    max_trials: int | None, max_parallel: int | None, suggested: int, error: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        lifecycle.check_update(max_trials, max_parallel, suggested)
    assert str(refused.value) == error


@pytest.mark.parametrize(
    ("max_trials", "max_parallel"), [(5, None), (0, None), (None, 0), (9, 2)]
)
def test_update_accepts_limits_at_or_above_what_was_handed_out(
    max_trials: int | None, max_parallel: int | None
) -> None:
    lifecycle.check_update(max_trials, max_parallel, 5)


def test_limits_change_only_while_the_study_lives() -> None:
    for state in (ACTIVE, STOPPED, PAUSED):
        lifecycle.can_update("s", state)
    for state in (COMPLETED, CANCELLED):
        with pytest.raises(Conflict, match="its limits cannot change"):
            lifecycle.can_update("s", state)


def test_stop_reasons_default_to_what_happened_to_the_study() -> None:
    assert lifecycle.stop_reason(Action.CANCEL, "") == "study cancelled"
    assert lifecycle.stop_reason(Action.STOP, "  ") == "study stopped"
    assert lifecycle.stop_reason(Action.STOP, " bad region ") == "bad region"


def test_a_study_file_and_the_sdk_set_max_parallel_trials() -> None:
    space = {"x": {"type": "float", "low": 0.0, "high": 1.0}}
    config, _ = parse({"space": space, "max_parallel_trials": 2})
    assert config.max_parallel_trials == 2
    with pytest.raises(StudyFileError, match="max_parallel_trials must be >= 0"):
        parse({"space": space, "max_parallel_trials": -1})
