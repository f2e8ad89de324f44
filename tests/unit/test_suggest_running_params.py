"""Suggest's params of running trials (read from the trials topic) stay bounded and
do not take back a trial that finished when a late duplicate arrives."""

from __future__ import annotations

from ladder.params import fill_params
from ladder.v1 import events_pb2, trial_pb2

from services.suggest.service import RunningParams


def _event(trial_id: str, kind: int, state: int) -> events_pb2.TrialEvent:
    event = events_pb2.TrialEvent(kind=kind)
    event.trial.trial_id, event.trial.study_id, event.trial.state = trial_id, "st", state
    fill_params(event.trial.params, {"x": 0.5})
    return event


STARTED = (events_pb2.TRIAL_STARTED, trial_pb2.RUNNING)


def test_a_terminal_event_removes_the_trial_and_a_late_duplicate_does_not_add_it_back() -> None:
    running = RunningParams()
    running.on_event(_event("t1", *STARTED))
    assert running.get("t1") == ("st", {"x": 0.5})
    running.on_event(_event("t1", events_pb2.TRIAL_COMPLETED, trial_pb2.COMPLETED))
    assert running.get("t1") is None
    running.on_event(_event("t1", *STARTED))  # re-read from the topic
    running.on_event(_event("t1", events_pb2.TRIAL_CHECKPOINTED, trial_pb2.RUNNING))
    assert running.get("t1") is None and len(running) == 0


def test_a_retryable_failure_lets_the_next_attempt_be_tracked() -> None:
    running = RunningParams()
    running.on_event(_event("t1", *STARTED))
    running.on_event(_event("t1", events_pb2.TRIAL_FAILED, trial_pb2.RESUMABLE))
    assert running.get("t1") is None
    running.on_event(_event("t1", *STARTED))
    assert running.get("t1") == ("st", {"x": 0.5})


def test_the_tables_are_capped() -> None:
    running = RunningParams(capacity=3)
    for i in range(10):
        running.on_event(_event(f"t{i}", *STARTED))
    assert len(running) == 3
    assert [running.get(f"t{i}") is not None for i in (6, 7, 8, 9)] == [False, True, True, True]
    for i in range(10):
        running.on_event(_event(f"d{i}", events_pb2.TRIAL_PRUNED, trial_pb2.PRUNED))
    assert len(running._finished) == 3


def test_params_of_pending_trials_come_from_the_topic_and_redis_only_for_the_rest() -> None:
    running = RunningParams()
    running.on_event(_event("t1", *STARTED))
    asked: list[list[str]] = []

    def read(trial_ids: list[str]) -> list[trial_pb2.Trial]:
        asked.append(trial_ids)
        found = [trial_pb2.Trial(trial_id=t) for t in trial_ids if t != "gone"]
        for trial in found:
            fill_params(trial.params, {"x": 0.25})
        return found

    assert running.params_of(["t1"], read) == [{"x": 0.5}] and asked == []
    assert running.params_of(["t1", "t2", "gone"], read) == [{"x": 0.5}, {"x": 0.25}]
    assert asked == [["t2", "gone"]]  # one read, of the trials not seen on the topic
