"""When a study is finished (``ladder.lifecycle``) and how the suggest service's sweep
completes it (``services.suggest.completion``), with a fake study store and clock."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from ladder import lifecycle
from ladder.errors import Conflict, NotFound
from ladder.lifecycle import ACTIVE, COMPLETED, STOPPED, Action, Progress
from ladder.space import StudyConfigError
from ladder.v1 import events_pb2, study_pb2, trial_pb2

from services.suggest.completion import StudyCompletion


def progress(**kw: int) -> Progress:
    values = {"state": ACTIVE, "max_trials": 4, "suggested": 4, "unfinished": 0, "paused": 0}
    values.update(kw)
    return Progress(**values)


@pytest.mark.parametrize(
    ("kw", "quiet", "done"),
    [
        ({}, 0.0, True),
        ({"state": STOPPED}, 0.0, True),  # a stopped study whose budget ended is done too
        ({"state": COMPLETED}, 0.0, False),  # already
        ({"max_trials": 0, "suggested": 9}, 99.0, False),  # unbounded: never by itself
        ({"suggested": 3}, 99.0, False),  # budget left
        ({"unfinished": 1}, 99.0, False),  # a trial is suggested, running or resumable
        ({"paused": 2}, 9.9, False),  # a PROMOTE may still be under way
        ({"paused": 2}, 10.0, True),  # settled: paused trials stay at their rung
    ],
)
def test_finished(kw: dict, quiet: float, done: bool) -> None:
    assert lifecycle.finished(progress(**kw), quiet, settle_seconds=10.0) is done


def test_refusals_name_the_study_and_the_way_out() -> None:
    refused = lifecycle.refusal(Action.STOP, "st-1", COMPLETED)
    assert isinstance(refused, Conflict)
    assert str(refused) == (
        "study 'st-1' is completed: it cannot be stopped (its budget is spent and every "
        "trial ended)"
    )
    assert "`ladder study resume st-1`" in str(lifecycle.stopped("st-1"))
    assert [lifecycle.state_name(s) for s in (ACTIVE, STOPPED, COMPLETED, 42)] == [
        "active", "stopped", "completed", "42",
    ]


@dataclass
class FakeStudies:
    """The StudyStore calls the completion sweep makes, over plain dicts."""

    max_trials: dict[str, int]
    progress_of: dict[str, Progress] = field(default_factory=dict)
    reads: list[str] = field(default_factory=list)
    invalid: set[str] = field(default_factory=set)  # stored configs that no longer validate
    broken: set[str] = field(default_factory=set)  # studies whose progress read raises

    def spec(self, study_id: str) -> object:
        if study_id not in self.max_trials:
            raise NotFound(study_id)
        if study_id in self.invalid:
            raise StudyConfigError(f"study {study_id!r}: max_resource must be positive")
        return type("Spec", (), {"max_trials": self.max_trials[study_id]})

    def get(self, study_id: str) -> study_pb2.Study | None:
        if study_id not in self.max_trials:
            return None
        config = study_pb2.StudyConfig(max_trials=self.max_trials[study_id])
        return study_pb2.Study(study_id=study_id, config=config)

    def progress(self, study_id: str, max_trials: int) -> Progress:
        self.reads.append(study_id)
        if study_id in self.broken:
            raise ValueError(f"study {study_id!r}: a stored field is not a number")
        return self.progress_of[study_id]

    def transition(self, study_id: str, action: Action) -> tuple[study_pb2.Study, bool]:
        assert action is Action.COMPLETE
        before = self.progress_of[study_id]
        self.progress_of[study_id] = Progress(
            COMPLETED, before.max_trials, before.suggested, before.unfinished, before.paused
        )
        study = study_pb2.Study(study_id=study_id, state=COMPLETED)
        return study, before.state != COMPLETED

    def list(self) -> list[study_pb2.Study]:
        return [
            study_pb2.Study(
                study_id=sid, state=p.state, config=study_pb2.StudyConfig(max_trials=p.max_trials)
            )
            for sid, p in self.progress_of.items()
        ]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ended(study_id: str, state: int = trial_pb2.COMPLETED) -> events_pb2.TrialEvent:
    return events_pb2.TrialEvent(trial=trial_pb2.Trial(study_id=study_id, state=state))


def test_sweep_completes_finished_studies_once_and_announces_them() -> None:
    studies = FakeStudies(
        {"done": 2, "left": 3, "open": 0},
        {
            "done": progress(max_trials=2, suggested=2),
            "left": progress(max_trials=3, suggested=3, unfinished=1),
            "open": progress(max_trials=0, suggested=5),
        },
    )
    announced: list[str] = []
    completion = StudyCompletion(studies, lambda s: announced.append(s.study_id), 10.0)
    completion.sweep()  # the first sweep checks every stored study with a budget
    assert announced == ["done"]
    assert sorted(studies.reads) == ["done", "left"]

    # An event of a completed study costs nothing; the unfinished one is swept again.
    studies.reads.clear()
    completion.on_trial_event(ended("done"))
    completion.sweep()
    assert studies.reads == ["left"]
    studies.progress_of["left"] = progress(max_trials=3, suggested=3)
    completion.on_trial_event(ended("left"))
    completion.sweep()
    assert announced == ["done", "left"]
    studies.reads.clear()
    completion.sweep()
    assert studies.reads == []  # nothing waits any more


def test_paused_trials_settle_before_the_study_completes() -> None:
    studies = FakeStudies({"asha": 4}, {"asha": progress(paused=1)})
    clock = Clock()
    announced: list[str] = []
    completion = StudyCompletion(studies, lambda s: announced.append(s.study_id), 10.0,
                                 clock=clock)
    completion.sweep()
    clock.now += 6
    completion.on_trial_event(ended("asha", trial_pb2.PAUSED))
    clock.now += 9  # 15 s since start, 9 s since the last event
    completion.sweep()
    assert announced == []
    clock.now += 1
    completion.sweep()
    assert announced == ["asha"]


def test_an_event_that_could_not_be_published_is_retried() -> None:
    studies = FakeStudies({"s": 1}, {"s": progress(max_trials=1, suggested=1)})
    attempts: list[str] = []

    def announce(study: study_pb2.Study) -> None:
        attempts.append(study.study_id)
        if len(attempts) == 1:
            raise RuntimeError("broker away")

    completion = StudyCompletion(studies, announce, 10.0)
    completion.sweep()
    completion.sweep()
    completion.sweep()
    assert attempts == ["s", "s"]


def test_events_without_a_budget_spent_do_not_keep_the_study_waiting() -> None:
    studies = FakeStudies({"s": 10}, {"s": progress(max_trials=10, suggested=3)})
    completion = StudyCompletion(studies, lambda s: None, 10.0)
    completion.sweep()
    completion.on_trial_event(ended("s"))
    completion.on_trial_event(ended("s"))
    completion.on_trial_event(ended("s", trial_pb2.RUNNING))
    completion.sweep()
    completion.sweep()
    assert studies.reads == ["s", "s"]  # the start, then one read for both events


def test_one_faulty_study_stalls_no_other() -> None:
    """A study whose stored config no longer validates still completes by its stored
    budget; one whose check raises is logged and the others are still checked."""
    studies = FakeStudies(
        {"a-broken": 1, "b-invalid": 2, "c-fine": 1},
        {
            "a-broken": progress(max_trials=1, suggested=1),
            "b-invalid": progress(max_trials=2, suggested=2),
            "c-fine": progress(max_trials=1, suggested=1),
        },
        invalid={"b-invalid"},
        broken={"a-broken"},
    )
    announced: list[str] = []
    completion = StudyCompletion(studies, lambda s: announced.append(s.study_id), 10.0)
    completion.sweep()
    assert announced == ["b-invalid", "c-fine"]
    studies.broken.clear()
    completion.sweep()  # the faulty one is still waiting, and completes once it reads
    assert announced == ["b-invalid", "c-fine", "a-broken"]
