"""The bench replay and the early-stop service decide alike: the same reports go through
``replay.LadderPolicy`` and through the service's stage 1 and stage 2 handlers (its own
LeaderboardView and tables over plain dicts, no Kafka), and every decision is compared."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from ladder.schedulers import (
    Action,
    AshaForm,
    CurveState,
    Leaderboards,
    RungDecision,
    SchedulerKind,
    SchedulerSpec,
)
from ladder.schedulers.engine import Crossing, EarlyStopEngine
from ladder.schedulers.replay import CurveTable, LadderPolicy, replay
from ladder.testing import FakeApp, FakeTable, fake_event
from ladder.v1 import events_pb2

from services.earlystop.agents import BatchWork, EarlyStopAgents
from services.earlystop.studies import StudyEntry
from services.earlystop.tables import EarlyStopTables, LeaderboardView

STUDY = "parity"


@dataclass
class FakeStudies:
    spec: SchedulerSpec
    unknown_study_wait: float = 0.0

    async def lookup(self, study_id: str, published_at: float | None) -> StudyEntry:
        return StudyEntry(study_id, self.spec)


class RecordingEngine(EarlyStopEngine):
    def __init__(self) -> None:
        super().__init__(Leaderboards())
        self.made: list[RungDecision] = []

    def judge(self, spec: SchedulerSpec, crossing: Crossing) -> list[RungDecision]:
        decisions = super().judge(spec, crossing)
        self.made.extend(decisions)
        return decisions


@dataclass
class RecordingPolicy(LadderPolicy):
    """The replay's policy, remembering every report it was given."""

    reports: list[tuple[str, int, float]] = field(default_factory=list)

    def report(self, trial: int, step: int, value: float) -> bool | Action:
        self.reports.append((self.trial_id(trial), step, value))
        return super().report(trial, step, value)


def agents_over_fakes(studies: object, **options: Any) -> tuple[EarlyStopAgents, FakeApp]:
    """The service's agents on a FakeApp (topics named after their role, "dead" for
    dead-letter) with tables over plain dicts."""
    app = FakeApp()
    topics = SimpleNamespace(
        studies="studies",
        metrics="metrics",
        rungs="rungs",
        decisions="decisions",
        dead_letter="dead",
    )
    tables = EarlyStopTables(curves=FakeTable(), entries=FakeTable())
    agents = EarlyStopAgents(
        app,  # type: ignore[arg-type]
        SimpleNamespace(topics=topics),  # type: ignore[arg-type]
        tables,
        studies,  # type: ignore[arg-type]
        LeaderboardView(tables.entries),  # type: ignore[arg-type]
        **options,
    )
    return agents, app


async def through_the_service(
    spec: SchedulerSpec, reports: list[tuple[str, int, float]]
) -> list[events_pb2.Decision]:
    """Each report through stage 1, then each crossing it emitted through stage 2 twice
    (the second time as a replayed record), one batch per record, all acked."""
    agents, app = agents_over_fakes(FakeStudies(spec))
    rungs, decisions = app.topics["rungs"], app.topics["decisions"]
    for offset, (trial_id, step, value) in enumerate(reports):
        report = events_pb2.MetricReport(
            study_id=STUDY, trial_id=trial_id, step=step, value=value, ts_ms=1
        )
        emitted = len(rungs.sent)
        work = BatchWork()
        await agents.on_metric(fake_event("metrics", offset, report.SerializeToString()), work)
        await agents._finish_curves(work, True)
        for crossing in rungs.sent[emitted:] * 2:
            work = BatchWork()
            await agents.on_rung(fake_event("rungs", offset, crossing), work)
            await agents._finish_decisions(work, True)
    return [events_pb2.Decision.FromString(raw) for raw in decisions.sent]


def as_row(
    trial_id: str, action: str, rung: int, cutoff: float, rank: int, population: int, reason: str
) -> tuple[Any, ...]:
    return (trial_id, action, rung, repr(cutoff), rank, population, reason)


def base_spec(**options: Any) -> SchedulerSpec:
    return SchedulerSpec(
        min_resource=1,
        max_resource=27,
        reduction_factor=3,
        grace_period=1,
        min_population=3,
        metric="val_loss",
        resource_unit="epochs",
        **options,
    )


SPECS = {
    "asha-stopping": base_spec(),
    "asha-late-bloomers": base_spec(protect_late_bloomers=True),
    "asha-promotion": base_spec(form=AshaForm.PROMOTION),
    "hyperband": base_spec(kind=SchedulerKind.HYPERBAND),
    "hyperband-promotion": base_spec(kind=SchedulerKind.HYPERBAND, form=AshaForm.PROMOTION),
    "median": base_spec(kind=SchedulerKind.MEDIAN),
}


def curves(configs: int = 60, epochs: int = 27) -> CurveTable:
    """Noisy decreasing curves of different quality and speed; two of the best runs
    diverge (after epoch 2 and epoch 6)."""
    rng = np.random.default_rng(12)
    t = np.arange(1, epochs + 1, dtype=float)
    quality = rng.standard_normal(configs)
    quality[[5, 17]] = -3.0
    values = 0.3 + t[None, :] ** -0.5 + 0.2 * quality[:, None]
    values += 0.05 * rng.standard_normal((configs, epochs))
    values[5, 2:] = math.nan
    values[17, 6:] = math.inf
    seconds = rng.lognormal(0.0, 0.5, size=(configs, 1)) * np.ones((1, epochs))
    return CurveTable(values, seconds)


@pytest.mark.parametrize("name", list(SPECS))
def test_replay_and_service_make_the_same_decisions(name: str) -> None:
    spec = SPECS[name]
    engine = RecordingEngine()
    policy = RecordingPolicy(spec, study_id=STUDY, engine=engine)
    replay(curves(), policy, workers=6)

    service = asyncio.run(through_the_service(spec, policy.reports))

    expected = [
        as_row(d.trial_id, d.action.value, d.rung, d.cutoff, d.rank, d.population, d.reason)
        for d in engine.made
    ]
    got = [
        as_row(
            d.trial_id,
            events_pb2.Action.Name(d.action),
            d.rung,
            d.cutoff,
            d.rank,
            d.population,
            d.reason,
        )
        for d in service
    ]
    assert len(got) == len(expected)
    for position, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
        assert mine == theirs, f"decision {position}"
    # The scenario exercises what it claims to: stops (or pauses), divergence, promotions.
    actions = {d.action for d in engine.made}
    assert {Action.STOP, Action.PAUSE} & actions
    assert sum(d.rule == "divergence" for d in engine.made) == 2
    if spec.promotion:
        assert any(
            d.action is Action.PROMOTE and "promoted from pause" in d.reason for d in engine.made
        )


def test_a_replayed_crossing_decides_nothing_and_undo_takes_a_judgement_back() -> None:
    spec = replace(base_spec(form=AshaForm.PROMOTION), min_population=1)
    boards = Leaderboards()
    engine = EarlyStopEngine(boards)

    def crossing(trial_id: str, value: float) -> Crossing:
        return Crossing(STUDY, trial_id, 0, 1.0, value, value)

    for trial_id, value in [("a", 0.1), ("b", 0.5), ("c", 0.6)]:
        assert engine.judge(spec, crossing(trial_id, value))
    assert engine.judge(spec, crossing("c", 0.6)) == []  # replayed: nothing again
    board = boards.board(STUDY, 0, spec.maximize)
    # n = 4 keeps the top 1: "d" is best, so its own decision is PROMOTE.
    decisions = engine.judge(spec, crossing("d", 0.05))
    assert [(d.trial_id, d.action) for d in decisions] == [("d", Action.PROMOTE)]
    assert "d" in board and "d" in board.promoted
    engine.undo(spec, crossing("d", 0.05), decisions)
    assert "d" not in board and "d" not in board.promoted
    assert engine.judge(spec, crossing("d", 0.05)) == decisions  # the retry decides alike


def test_a_divergence_is_judged_once_on_its_own_pseudo_rung() -> None:
    spec = base_spec()
    engine = EarlyStopEngine(Leaderboards())
    observed = engine.observe(spec, CurveState(study_id=STUDY), STUDY, "t1", 4.0, math.nan)
    [diverged] = observed.crossings
    assert diverged.diverged and diverged.board_rung == -1 and diverged.rung == 1
    [decision] = engine.judge(spec, diverged)
    assert (decision.trial_id, decision.action, decision.rule) == ("t1", Action.STOP, "divergence")
    assert engine.judge(spec, diverged) == []
