"""ASHA's promotion form: PAUSE / PROMOTE through the real state scripts and services.

The state tests drive the Lua transitions on a real Redis (fencing, idempotent replays,
a PROMOTE that overtakes the worker's PauseTrial). The end-to-end test runs suggest,
evaluate and early-stop as processes on the real broker and the real worker runtime: a
trial paused at rung 0 is promoted when a later, worse trial grows the rung, comes back
from Suggest with its checkpoint, resumes after the paused step and completes; trials
still paused when the study's budget is spent stay PAUSED.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from ladder.client import LadderClient
from ladder.config import Settings
from ladder.errors import BudgetExhausted, Conflict, StaleAttempt
from ladder.params import fill_params
from ladder.state import State, open_state
from ladder.testing import TopicReader, decoded, wait_for
from ladder.v1 import events_pb2, study_pb2, trial_pb2

from workers.runtime import Outcome, Worker, WorkerConfig

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------- state


@pytest.fixture
def state(infra: Settings) -> Iterator[State]:
    st = open_state(infra)
    yield st
    st.close()


def _running_trial(state: State) -> tuple[str, str]:
    study_id = f"promo-{uuid.uuid4().hex[:8]}"
    config = study_pb2.StudyConfig(
        metric="val_loss",
        scheduler=study_pb2.SchedulerConfig(max_resource=9, form=study_pb2.ASHA_PROMOTION),
    )
    state.studies.create(study_pb2.Study(study_id=study_id, config=config, created_unix_ms=1))
    proto = trial_pb2.Trial(study_id=study_id, seed=1)
    fill_params(proto.params, {"lr": 0.01})
    (made,) = state.trials.create_trials(study_id, [proto], 0, 60, "test")
    trial_id = made.trial.trial_id
    state.trials.start(trial_id, "a1", "w1", 30)
    state.trials.checkpoint(trial_id, "a1", "file:///tmp/ckpt-1", 1, 30)
    return study_id, trial_id


def _decision(trial_id: str, action: int, rung: int, reason: str = "") -> events_pb2.Decision:
    return events_pb2.Decision(trial_id=trial_id, action=action, rung=rung, reason=reason)


def test_pause_then_promote_is_fenced_and_replays_change_nothing(state: State) -> None:
    study_id, trial_id = _running_trial(state)
    trials = state.trials
    assert trials.apply_decision(_decision(trial_id, events_pb2.PAUSE, 0))[0] == "OK"
    paused = trials.pause(trial_id, "a1", 1, 0)
    assert paused.changed and paused.event_kind == events_pb2.TRIAL_PAUSED
    assert paused.trial.state == trial_pb2.PAUSED and paused.trial.paused_rung == 0
    assert trials.paused(study_id) == [trial_id]
    assert trial_id not in trials.pending(study_id)  # nobody evaluates it now
    assert trials.lease_deadline_ms(trial_id) is None
    assert not trials.pause(trial_id, "a1", 1, 0).changed  # a retried PauseTrial
    with pytest.raises(StaleAttempt, match="stale attempt"):
        trials.heartbeat(trial_id, "a1", 2, 30)
    with pytest.raises(Conflict, match="PAUSED"):
        trials.start(trial_id, "a2", "w2", 30)  # only a PROMOTE brings it back
    assert trials.claim_resumable(study_id, 5, 60) == []
    # A replayed PAUSE changes nothing; the PROMOTE for its rung makes it RESUMABLE.
    assert trials.apply_decision(_decision(trial_id, events_pb2.PAUSE, 0))[0] == "REPEAT"
    status, promoted = trials.apply_decision(
        _decision(trial_id, events_pb2.PROMOTE, 0, "promoted from pause")
    )
    assert status == "RESUMED" and promoted is not None
    assert promoted.event_kind == events_pb2.TRIAL_PROMOTED
    assert promoted.trial.state == trial_pb2.RESUMABLE
    assert trials.paused(study_id) == [] and trial_id in trials.pending(study_id)
    # Replays: the same PROMOTE again, or the older PAUSE, change nothing.
    assert trials.apply_decision(
        _decision(trial_id, events_pb2.PROMOTE, 0, "promoted from pause")
    ) == ("REPEAT", None)
    assert trials.apply_decision(_decision(trial_id, events_pb2.PAUSE, 0))[0] == "KEPT"
    (claimed,) = trials.claim_resumable(study_id, 5, 60)
    assert claimed.trial_id == trial_id and claimed.checkpoint_step == 1
    started = trials.start(trial_id, "a2", "w2", 30)
    assert started.trial.state == trial_pb2.RUNNING
    assert started.trial.checkpoint_uri == "file:///tmp/ckpt-1"
    with pytest.raises(StaleAttempt, match="stale attempt"):
        trials.pause(trial_id, "a1", 1, 0)  # the old attempt is fenced out
    # Decisions about a later rung replace the earlier ones; an earlier one never does.
    assert trials.apply_decision(_decision(trial_id, events_pb2.PAUSE, 1))[0] == "OK"
    assert trials.apply_decision(_decision(trial_id, events_pb2.PROMOTE, 0, "x"))[0] == "KEPT"
    assert trials.decision(trial_id).rung == 1


def test_a_promote_that_overtakes_the_pause_makes_the_trial_resumable_at_once(
    state: State,
) -> None:
    study_id, trial_id = _running_trial(state)
    trials = state.trials
    trials.apply_decision(_decision(trial_id, events_pb2.PAUSE, 0))
    # The PROMOTE arrives while the worker is still checkpointing for the PAUSE.
    assert trials.apply_decision(_decision(trial_id, events_pb2.PROMOTE, 0)) == ("OK", None)
    moved = trials.pause(trial_id, "a1", 1, 0)
    assert moved.trial.state == trial_pb2.RESUMABLE
    assert moved.event_kind == events_pb2.TRIAL_PROMOTED
    assert trials.paused(study_id) == []
    assert [t.trial_id for t in trials.claim_resumable(study_id, 5, 60)] == [trial_id]


def test_pausing_a_stopped_trial_is_refused(state: State) -> None:
    _, trial_id = _running_trial(state)
    state.trials.apply_decision(_decision(trial_id, events_pb2.STOP, 0))
    with pytest.raises(Conflict, match="STOP"):
        state.trials.pause(trial_id, "a1", 1, 0)
    assert state.trials.get(trial_id).state == trial_pb2.RUNNING


# --------------------------------------------------------------------------- services


class ScriptedWorkload:
    """The next trial started gets ``curves[0]`` (value after each step); the curve
    travels inside the checkpoint, so a resumed trial goes on with its own."""

    name = "scripted"
    metric = "val_loss"
    max_steps = 4

    def __init__(self) -> None:
        self.curves: list[list[float]] = []
        self.trained: list[int] = []

    def init(self, params: Mapping[str, Any], seed: int) -> dict[str, Any]:
        return {"curve": self.curves.pop(0), "steps": 0}

    def train_step(self, state: dict[str, Any], step: int) -> float:
        state["steps"] = step
        self.trained.append(step)
        return float(state["curve"][step - 1])

    def evaluate(self, state: dict[str, Any]) -> float:
        return float(state["curve"][state["steps"] - 1])

    def save_checkpoint(self, state: dict[str, Any], path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(state))

    def load_checkpoint(self, path: Path, params: Mapping[str, Any], seed: int) -> Any:
        return json.loads(path.read_text())


@pytest.fixture
def promotion_system(
    infra: Settings, start_service: Callable[..., Any], tmp_path: Path
) -> Settings:
    addresses = {
        "suggest_addr": start_service("services.suggest").addr,
        "evaluate_addr": start_service("services.evaluate").addr,
    }
    start_service("services.earlystop")
    return dataclasses.replace(infra, state_dir=tmp_path, **addresses)


def test_a_paused_trial_is_promoted_resumed_from_its_checkpoint_and_completes(
    promotion_system: Settings, tmp_path: Path
) -> None:
    settings = promotion_system
    client = LadderClient(settings)
    study = client.create_study(
        {
            "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
            "name": "promotion",
            "max_trials": 4,
            # eta 2, rungs 1 and 2 below max 4; two trials at a rung before any pause.
            "scheduler": {
                "kind": "asha",
                "form": "promotion",
                "min_resource": 1,
                "max_resource": 4,
                "reduction_factor": 2,
                "min_population": 2,
                "smoothing": "none",
            },
        }
    )
    sid = study.study_id
    trials_topic = TopicReader(settings, settings.topics.trials)
    workload = ScriptedWorkload()
    worker = Worker(
        client,
        workload,
        WorkerConfig(
            study_id=sid,
            worker_id="w0",
            state_dir=tmp_path,
            checkpoint_every=0,
            decision_wait=60,
            heartbeat_interval=5,
        ),
    )
    state = open_state(settings)

    def run_next(curve: list[float] | None) -> tuple[str, Outcome]:
        if curve is not None:
            workload.curves.append(curve)
        (suggestion,) = client.suggest(sid, "w0")
        return suggestion.trial.trial_id, worker.run_trial(suggestion)

    # Trials run one after the other, each waiting for its rung verdicts (decision_wait),
    # so the rungs grow in this order.
    t1, outcome = run_next([0.1, 0.1, 0.1, 0.1])
    assert outcome is Outcome.COMPLETED  # rung 0 with population 1 < 2: promoted
    t2, outcome = run_next([0.5, 0.05, 0.05, 0.05])
    assert outcome is Outcome.PAUSED  # rank 2 of 2, top 1 kept
    paused = client.get_trial(t2)
    assert paused.state == trial_pb2.PAUSED and paused.paused_rung == 0
    assert paused.checkpoint_step == 1 and paused.checkpoint_uri
    t3, outcome = run_next([0.9, 0.9, 0.9, 0.9])
    assert outcome is Outcome.PAUSED
    # The 4th crossing makes the rung keep 2: t4 pauses and t2 (rank 2) is promoted.
    t4, outcome = run_next([0.95, 0.95, 0.95, 0.95])
    assert outcome is Outcome.PAUSED
    wait_for(
        lambda: client.get_trial(t2).state == trial_pb2.RESUMABLE,
        60,
        "t2 resumable after its PROMOTE",
    )
    promote = state.trials.decision(t2)
    assert promote.action == events_pb2.PROMOTE and promote.rung == 0
    assert (promote.rank, promote.population, promote.cutoff) == (2, 4, 0.5)
    assert "promoted from pause" in promote.reason
    assert sorted(state.trials.paused(sid)) == sorted([t3, t4])

    # Suggest hands t2 back (resumable first, outside the spent budget) with its
    # checkpoint; the runtime resumes after step 1, beats rung 1 and completes.
    (resumed,) = client.suggest(sid, "w1")
    assert resumed.resumed and resumed.trial.trial_id == t2
    trained_before = len(workload.trained)
    assert worker.run_trial(resumed) is Outcome.COMPLETED
    assert workload.trained[trained_before:] == [2, 3, 4]
    done = client.get_trial(t2)
    assert done.state == trial_pb2.COMPLETED and done.final_value == 0.05
    assert done.attempt_number == 2

    # The budget is spent: the trials still paused stay PAUSED (their rung result and
    # checkpoint kept); nothing else is handed out.
    with pytest.raises(BudgetExhausted):
        client.suggest(sid, "w0")
    assert {client.get_trial(t).state for t in (t3, t4)} == {trial_pb2.PAUSED}
    assert client.get_trial(t1).state == trial_pb2.COMPLETED

    def lifecycle() -> list[int]:
        events = decoded(events_pb2.TrialEvent, trials_topic.poll())
        return [e.kind for e in events if e.trial.trial_id == t2]

    kinds = wait_for(
        lambda: (k := lifecycle()) and events_pb2.TRIAL_COMPLETED in k and k,
        60,
        "t2's lifecycle on the trials topic",
    )
    expected = [events_pb2.TRIAL_PAUSED, events_pb2.TRIAL_PROMOTED, events_pb2.TRIAL_COMPLETED]
    assert [k for k in kinds if k in expected] == expected
    trials_topic.close()
    state.close()
    client.close()
