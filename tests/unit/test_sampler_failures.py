"""Failed trials reach the samplers: the store keeps them (replays change nothing),
the fidelity rule hands the infeasible ones to the models, the GP fits them at the
worst feasible value, TPE starts modelling with them, and the suggest service takes
FAILED trials (never RESUMABLE ones) off the trials topic."""

from __future__ import annotations

import logging
import math
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
from ladder import failures
from ladder.config import Settings, Topics
from ladder.params import fill_params
from ladder.samplers import (
    INFEASIBLE_KINDS,
    FidelitySet,
    LocalDraws,
    Observation,
    ObservationStore,
    SamplerContext,
    TPESampler,
    select_fidelity,
)
from ladder.samplers.gp import penalised
from ladder.samplers.tpe import N_STARTUP
from ladder.space import Kind, ParamSpec, Space
from ladder.v1 import events_pb2, trial_pb2

from services.suggest.service import SuggestServicer

LINE = Space([ParamSpec("x", Kind.FLOAT, low=0, high=1)])


def ok(trial: int, value: float, resource: float | None = None) -> Observation:
    return Observation(f"t{trial}", {"x": trial / 100}, value, resource)


def failed(trial: int, kind: int = failures.OUT_OF_MEMORY) -> Observation:
    return Observation.of_failure(f"t{trial}", {"x": trial / 100}, kind)


def test_which_failures_inform_the_samplers() -> None:
    assert {failures.OUT_OF_MEMORY, failures.DIVERGED, failures.TIMEOUT} <= INFEASIBLE_KINDS
    assert failures.INFRASTRUCTURE in INFEASIBLE_KINDS  # only FAILED once retries ran out
    assert failures.USER_ERROR not in INFEASIBLE_KINDS  # a bug: fails wherever it runs
    assert failed(1).failed and failed(1).infeasible and math.isnan(failed(1).value)
    assert failed(1, failures.USER_ERROR).failed and not failed(1, failures.USER_ERROR).infeasible
    assert not ok(1, 0.5).failed and not ok(1, 0.5).infeasible


def test_the_store_keeps_failures_and_a_replay_changes_nothing() -> None:
    store = ObservationStore()
    woken: list[int] = []
    store.subscribe(lambda: woken.append(len(store)))
    batch = [ok(1, 0.3), failed(2), failed(3, failures.USER_ERROR), failed(4, failures.DIVERGED)]
    assert store.add(batch) == 4
    # A replayed failure has a NaN value of its own (decoded again, or pickled to the
    # refit process): still the same observation.
    replay = pickle.loads(pickle.dumps(batch))
    assert replay[1].value is not batch[1].value and replay == batch
    assert store.add(replay) == 0 and woken == [4]
    assert store.failures() == {
        failures.OUT_OF_MEMORY: 1,
        failures.USER_ERROR: 1,
        failures.DIVERGED: 1,
    }
    assert store.infeasible == 2
    assert failed(2) in store.snapshot() and store.changes_since(0)[1] == 4


def test_infeasible_observations_join_the_chosen_fidelity() -> None:
    finals = [ok(i, i / 10) for i in range(3)]
    chosen = select_fidelity([*finals, failed(10), failed(11, failures.USER_ERROR)], 3)
    assert chosen.resource is None and chosen.observations == finals
    assert chosen.infeasible == [failed(10)]  # USER_ERROR informs no model
    assert chosen.size == 4

    # Too few final values: the rung is modelled, and the infeasible trial's own rung
    # value gives way to its failure (its final outcome is known); the rung values of a
    # trial that failed with a bug stay.
    rung = [ok(i, i / 10, 3.0) for i in range(10, 15)]
    data = [finals[0], failed(10), failed(11, failures.USER_ERROR), *rung]
    chosen = select_fidelity(data, 4)
    assert chosen.resource == 3.0
    assert [o.trial_id for o in chosen.observations] == ["t11", "t12", "t13", "t14"]
    assert chosen.infeasible == [failed(10)]


def test_the_gp_fits_infeasible_points_at_the_worst_feasible_value() -> None:
    fidelity = FidelitySet(None, [ok(1, 0.2), ok(2, 0.9), ok(3, 0.5)], [failed(4), failed(5)])
    minimise = penalised(fidelity, maximize=False)
    assert [o.value for o in minimise] == [0.2, 0.9, 0.5, 0.9, 0.9]
    assert [o.value for o in penalised(fidelity, maximize=True)][3:] == [0.2, 0.2]
    assert [o.params for o in minimise[3:]] == [{"x": 0.04}, {"x": 0.05}]
    assert penalised(FidelitySet(None, [ok(1, 0.2)]), maximize=False) == [ok(1, 0.2)]


def test_tpe_models_as_soon_as_feasible_and_infeasible_points_fill_its_startup() -> None:
    def tpe() -> TPESampler:
        return TPESampler(SamplerContext(LINE, seed=3, reserve=LocalDraws()))

    initial = [p.params for p in tpe().suggest((), 4)]
    rng = np.random.default_rng(0)
    points = [{"x": float(x)} for x in rng.random(N_STARTUP)]
    only_failures = [Observation.of_failure(f"f{i}", p, 4) for i, p in enumerate(points)]
    assert [p.params for p in tpe().suggest(only_failures, 4)] == initial  # nothing to model
    mixed = [Observation("t0", points[0], 0.1), *only_failures[1:]]
    assert [p.params for p in tpe().suggest(mixed, 4)] != initial


# ------------------------------------------------------------ the suggest service


@pytest.fixture
def servicer() -> SuggestServicer:
    """Only the trials-topic handler is used: no Redis, no broker."""
    settings = Settings(kafka_bootstrap="", redis_url="", topics=Topics("t."))
    nothing = SimpleNamespace(studies=None, trials=None)
    return SuggestServicer(settings, nothing, None, 60.0)  # type: ignore[arg-type]


def _record(servicer: SuggestServicer, trial_id: str, state: int, kind: int) -> SimpleNamespace:
    event = events_pb2.TrialEvent(kind=events_pb2.TRIAL_FAILED)
    event.trial.trial_id, event.trial.study_id, event.trial.state = trial_id, "st", state
    event.trial.failure_kind = kind
    fill_params(event.trial.params, {"x": 0.9})
    return SimpleNamespace(topic=servicer.settings.topics.trials, value=event.SerializeToString())


def test_the_service_observes_failed_trials_once_and_resumable_ones_never(
    servicer: SuggestServicer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "ladder.suggest")
    oom = _record(servicer, "st-t1", trial_pb2.FAILED, failures.OUT_OF_MEMORY)
    bug = _record(servicer, "st-t2", trial_pb2.FAILED, failures.USER_ERROR)
    retried = _record(servicer, "st-t3", trial_pb2.RESUMABLE, failures.INFRASTRUCTURE)
    for record in (oom, retried, bug, oom, bug):  # the topic is re-read: replays
        servicer.on_event(record)
    store = servicer.pool.observations("st")
    assert store.snapshot() == [
        Observation.of_failure("st-t1", {"x": 0.9}, failures.OUT_OF_MEMORY),
        Observation.of_failure("st-t2", {"x": 0.9}, failures.USER_ERROR),
    ]
    assert store.infeasible == 1
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("failed trial")]
    assert lines == [
        "failed trial st-t1 (OUT_OF_MEMORY) observed: infeasible, the samplers steer away "
        "from its region; the study has 1 failed trials, 1 infeasible observations",
        "failed trial st-t2 (USER_ERROR) observed: not used by the samplers (a bug, not a "
        "property of the region); the study has 2 failed trials, 1 infeasible observations",
    ]
