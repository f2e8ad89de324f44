"""A study's lifecycle through the real suggest and evaluate processes: it becomes
COMPLETED once its max_trials ended (GetStudy, the studies topic, Suggest's answer),
StopStudy makes Suggest refuse new trials while running and resumable ones finish,
ResumeStudy undoes it, and a completed study can be neither stopped nor resumed; with
PAUSED trials the study completes once the settle window passed, and they stay paused."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from ladder.config import Settings
from ladder.testing import Clients, code_and_message, decoded, read_topic, wait_for
from ladder.v1 import evaluate_pb2, events_pb2, space_pb2, study_pb2, suggest_pb2, trial_pb2

pytestmark = pytest.mark.integration

SPACE = space_pb2.SearchSpace(
    parameters=[space_pb2.Parameter(name="x", float_range=space_pb2.FloatRange(low=0, high=1))]
)


@pytest.fixture(scope="module")
def clients(start_module_service: Callable[..., Any]) -> Iterator[Clients]:
    suggest = start_module_service("services.suggest")
    evaluate = start_module_service("services.evaluate", {"LADDER_LEASE_SECONDS": "2"})
    both = Clients(suggest.addr, evaluate.addr)
    yield both
    both.close()


def create(clients: Clients, max_trials: int) -> str:
    config = study_pb2.StudyConfig(
        name="lifecycle", space=SPACE, metric="val_loss", max_trials=max_trials,
        scheduler=study_pb2.SchedulerConfig(kind=study_pb2.NONE),
    )
    return clients.create(config).study_id


def state_of(clients: Clients, study_id: str) -> int:
    request = suggest_pb2.GetStudyRequest(study_id=study_id)
    return clients.suggest.GetStudy(request, timeout=30).state


def stop(clients: Clients, study_id: str) -> study_pb2.Study:
    return clients.suggest.StopStudy(suggest_pb2.StopStudyRequest(study_id=study_id), timeout=30)


def resume(clients: Clients, study_id: str) -> study_pb2.Study:
    request = suggest_pb2.ResumeStudyRequest(study_id=study_id)
    return clients.suggest.ResumeStudy(request, timeout=30)


def run(clients: Clients, trial_id: str, value: float) -> None:
    attempt = uuid.uuid4().hex
    clients.start(trial_id, attempt)
    clients.complete(trial_id, attempt, value)


def test_a_study_completes_once_its_budget_ended(infra: Settings, clients: Clients) -> None:
    study_id = create(clients, max_trials=4)
    trials = [clients.one(study_id, f"w{i}").trial.trial_id for i in range(4)]
    for value, trial_id in enumerate(trials[:3]):
        run(clients, trial_id, float(value))
    # Three of four ended: the last one still runs, so the study goes on.
    attempt = uuid.uuid4().hex
    clients.start(trials[3], attempt)
    assert state_of(clients, study_id) == study_pb2.STUDY_ACTIVE
    clients.complete(trials[3], attempt, 0.5)

    wait_for(
        lambda: state_of(clients, study_id) == study_pb2.STUDY_COMPLETED, 30, "COMPLETED"
    )
    code, message = code_and_message(lambda: clients.one(study_id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert message == "study budget exhausted: 4 trials suggested"
    events = decoded(events_pb2.StudyEvent, read_topic(infra, infra.topics.studies))
    states = [e.study.state for e in events if e.study.study_id == study_id]
    assert states == [study_pb2.STUDY_ACTIVE, study_pb2.STUDY_COMPLETED]

    for call in (stop, resume):
        code, message = code_and_message(lambda c=call: c(clients, study_id))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert message.startswith(f"study {study_id!r} is completed: it cannot be")


def test_a_study_without_a_budget_stays_active(clients: Clients) -> None:
    study_id = create(clients, max_trials=0)
    run(clients, clients.one(study_id).trial.trial_id, 0.1)
    # No max_trials: the study is never done by itself (it may be stopped).
    assert state_of(clients, study_id) == study_pb2.STUDY_ACTIVE
    assert clients.one(study_id).trial.study_id == study_id


def test_stop_refuses_new_trials_and_resume_hands_them_out(
    infra: Settings, clients: Clients
) -> None:
    study_id = create(clients, max_trials=3)
    running = clients.one(study_id, "w-run").trial.trial_id
    attempt = uuid.uuid4().hex
    clients.start(running, attempt, "w-run")
    expiring = clients.one(study_id, "w-dies").trial.trial_id
    clients.start(expiring, "dies", "w-dies")

    assert stop(clients, study_id).state == study_pb2.STUDY_STOPPED
    assert stop(clients, study_id).state == study_pb2.STUDY_STOPPED  # idempotent

    # The worker that died left its trial resumable: it is handed out, and finishes.
    def expired() -> bool:
        clients.heartbeat(running, attempt)  # the running trial's worker lives on
        return clients.get(expiring).state == trial_pb2.RESUMABLE

    wait_for(expired, 30, "the dead worker's lease to expire")
    resumed = clients.one(study_id, "w-next")
    assert resumed.resumed and resumed.trial.trial_id == expiring
    code, message = code_and_message(lambda: clients.one(study_id, "w-new"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert message == (
        f"study {study_id!r} is stopped: it hands out no new trials until "
        f"`ladder study resume {study_id}` (ResumeStudy)"
    )
    # Running trials finish.
    assert clients.complete(running, attempt, 0.3).state == trial_pb2.COMPLETED
    assert state_of(clients, study_id) == study_pb2.STUDY_STOPPED

    assert resume(clients, study_id).state == study_pb2.STUDY_ACTIVE
    fresh = clients.one(study_id, "w-new")
    assert not fresh.resumed and fresh.trial.trial_id == f"{study_id}-t3"

    events = decoded(events_pb2.StudyEvent, read_topic(infra, infra.topics.studies))
    states = [e.study.state for e in events if e.study.study_id == study_id]
    assert states[-2:] == [study_pb2.STUDY_STOPPED, study_pb2.STUDY_ACTIVE]
    for call in (stop, resume):
        code, message = code_and_message(lambda c=call: c(clients, "no-such-study"))
        assert (code, message) == (grpc.StatusCode.NOT_FOUND, "study 'no-such-study' not found")


def test_paused_trials_settle_then_stay_paused_in_a_completed_study(
    start_service: Callable[..., Any],
) -> None:
    suggest = start_service("services.suggest", {"LADDER_STUDY_SETTLE_S": "2"})
    evaluate = start_service("services.evaluate")
    own = Clients(suggest.addr, evaluate.addr)
    try:
        study_id = create(own, max_trials=2)
        paused, done = (own.one(study_id, f"w{i}").trial.trial_id for i in range(2))
        own.start(paused, "p")
        own.evaluate.PauseTrial(
            evaluate_pb2.PauseTrialRequest(trial_id=paused, attempt_id="p", step=1, rung=0),
            timeout=30,
        )
        run(own, done, 0.2)
        # Nothing runs, but a PROMOTE for the paused trial could still be under way.
        started = time.monotonic()
        wait_for(lambda: state_of(own, study_id) == study_pb2.STUDY_COMPLETED, 30,
                 "COMPLETED after the settle window")
        assert time.monotonic() - started >= 1.0
        assert own.get(paused).state == trial_pb2.PAUSED
    finally:
        own.close()
