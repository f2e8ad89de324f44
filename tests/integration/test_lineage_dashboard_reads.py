"""The dashboard's reads from a real lineage process on each store engine (SQLite file,
PostgreSQL URL), after real records went through the broker: every study with its
summary (ListStudyListings), the trial table with each trial's stopping decision
(ListTrials), the learning curves down-sampled (GetStudyCurves) and the rung statistics
(GetStudyRungs); an unknown study is NOT_FOUND, a missing id INVALID_ARGUMENT."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from ladder.bus import EventProducer
from ladder.config import Settings
from ladder.curves import Point, downsample
from ladder.params import fill_params
from ladder.testing import wait_for
from ladder.v1 import events_pb2, lineage_pb2, lineage_pb2_grpc, study_pb2, trial_pb2
from test_lineage import lineage_db  # noqa: F401 - the store fixture, one per engine

pytestmark = pytest.mark.integration

TS = trial_pb2.TrialState
KIND = events_pb2.TrialEventKind
NAN = math.nan


class Published:
    """Two studies with trials in every shape the dashboard shows, published to the
    real topics; ids unique per test."""

    def __init__(self, settings: Settings) -> None:
        tag = uuid.uuid4().hex[:8]
        self.topics = settings.topics
        self.producer = EventProducer(settings, "dashboard-reads-test")
        self.study = f"dash-{tag}"  # MINIMIZE loss, the older one
        self.other = f"dash-max-{tag}"  # MAXIMIZE acc, created later
        self.points: dict[str, list[tuple[str, float, float]]] = {}  # (attempt, step, value)
        self.decisions: dict[str, int] = {}
        # Records held back by ``later()`` until ``release()``: the service answers once
        # without them, then must answer with them (nothing it keeps may be stale).
        self.late: list[tuple[str, str, Any]] = []
        self.holding = False

    def t(self, name: str) -> str:
        return f"{self.study}-{name}"

    def close(self) -> None:
        self.producer.close()

    def send(self, topic: str, key: str, message: Any) -> None:
        if self.holding:
            self.late.append((topic, key, message))
        else:
            self.producer.send(topic, key, message, wait=True)

    @contextmanager
    def later(self) -> Iterator[None]:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False

    def release(self) -> None:
        for topic, key, message in self.late:
            self.producer.send(topic, key, message, wait=True)
        self.late = []

    def study_event(self, study_id: str, direction: int, metric: str, created: int) -> None:
        config = study_pb2.StudyConfig(
            name=study_id, direction=direction, metric=metric, max_trials=10
        )
        config.scheduler.kind = study_pb2.ASHA
        study = study_pb2.Study(
            study_id=study_id, config=config, state=study_pb2.STUDY_ACTIVE,
            created_unix_ms=created,
        )
        self.send(self.topics.studies, study_id, events_pb2.StudyEvent(study=study, ts_ms=created))

    def event(
        self, trial_id: str, kind: str, state: str, ts_ms: int, attempt: int = 0,
        study_id: str = "", trial: dict[str, Any] | None = None, **fields: Any,
    ) -> None:
        study_id = study_id or self.study
        snapshot = trial_pb2.Trial(
            trial_id=trial_id, study_id=study_id, state=TS.Value(state), seed=7,
            attempt_id=f"a{attempt}" if attempt else "", attempt_number=attempt,
            worker_id="w1" if attempt else "", **(trial or {}),
        )
        fill_params(snapshot.params, {"lr": 0.01, "depth": 3, "optimizer": "adam"})
        self.send(
            self.topics.trials, study_id,
            events_pb2.TrialEvent(kind=KIND.Value(kind), trial=snapshot, ts_ms=ts_ms, **fields),
        )

    def suggested(self, trial_id: str, ts_ms: int, study_id: str = "", **fields: Any) -> None:
        self.event(trial_id, "TRIAL_SUGGESTED", "SUGGESTED", ts_ms, study_id=study_id, **fields)

    def started(self, trial_id: str, ts_ms: int, attempt: int = 1, study_id: str = "") -> None:
        self.event(trial_id, "TRIAL_STARTED", "RUNNING", ts_ms, attempt, study_id=study_id)

    def metrics(
        self, trial_id: str, values: list[float], first_step: int = 1, attempt: int = 1,
        ts_ms: int = 1_000, study_id: str = "",
    ) -> None:
        for i, value in enumerate(values):
            step = first_step + i
            self.points.setdefault(trial_id, []).append((f"a{attempt}", step, value))
            self.send(self.topics.metrics, trial_id, events_pb2.MetricReport(
                study_id=study_id or self.study, trial_id=trial_id, attempt_id=f"a{attempt}",
                worker_id="w1", metric="loss", step=step, value=value, ts_ms=ts_ms + step,
            ))

    def decision(
        self, trial_id: str, action: str, rung: int, ts_ms: int, cutoff: float = 0.5,
        reason: str = "",
    ) -> None:
        self.decisions[trial_id] = self.decisions.get(trial_id, 0) + 1
        self.send(self.topics.decisions, trial_id, events_pb2.Decision(
            study_id=self.study, trial_id=trial_id, action=events_pb2.Action.Value(action),
            rung=rung, resource=3 * 3**rung, cutoff=cutoff, rank=1, population=3,
            reason=reason or f"rung {rung}: {action.lower()}", scheduler="asha", ts_ms=ts_ms,
        ))

    def publish(self) -> None:
        study, other = self.study, self.other
        self.study_event(study, study_pb2.MINIMIZE, "loss", created=1_000)
        self.study_event(other, study_pb2.MAXIMIZE, "acc", created=2_000)
        t1, t2, t3, t4, t5, t6, t7 = (self.t(n) for n in ("t1", "t2", "t3", "t4", "t5", "t6",
                                                          "t7"))
        # t1: completed, the best.
        self.suggested(t1, 100, algorithm="gp", predicted_mean=0.3, predicted_std=0.05)
        self.started(t1, 110)
        self.metrics(t1, [1.0, 0.8, 0.9, 0.5, 0.4])
        self.decision(t1, "CONTINUE", 0, 200)
        with self.later():  # 5 points, 1 decision
            self.metrics(t1, [0.6, 0.3, 0.25, 0.2, 0.1], first_step=6)
            self.decision(t1, "CONTINUE", 1, 300)
            self.event(t1, "TRIAL_COMPLETED", "COMPLETED", 500, 1,
                       trial={"has_final_value": True, "final_value": 0.1,
                              "train_seconds": 40.0, "last_step": 10},
                       ended_attempt_id="a1", attempt_end=trial_pb2.ATTEMPT_COMPLETED)
        # t2: stopped at rung 1.
        self.suggested(t2, 120, algorithm="random")
        self.started(t2, 130)
        self.metrics(t2, [1.2, 1.1, 1.0, 0.95, 0.9, 0.9, 0.9, 0.88, 0.87])
        self.decision(t2, "CONTINUE", 0, 210)
        self.decision(t2, "STOP", 1, 310, cutoff=0.6,
                      reason="rung 1 (9 steps): rank 3/3, loss 0.87 > cutoff 0.6")
        self.event(t2, "TRIAL_PRUNED", "PRUNED", 320, 1, trial={"last_step": 9},
                   ended_attempt_id="a1", attempt_end=trial_pb2.ATTEMPT_PRUNED)
        # t3: preempted after step 4, resumed by attempt 2 from step 2's checkpoint (it
        # reports steps 3 and 4 again), still running.
        self.suggested(t3, 140)
        self.started(t3, 150)
        self.metrics(t3, [1.0, 0.9, 0.8, 0.7])
        self.decision(t3, "CONTINUE", 0, 215)
        self.event(t3, "TRIAL_FAILED", "RESUMABLE", 400, 1, reason="preempted: SIGTERM",
                   ended_attempt_id="a1", attempt_end=trial_pb2.ATTEMPT_PREEMPTED)
        with self.later():  # 4 points
            self.started(t3, 410, attempt=2)
            self.metrics(t3, [0.75, 0.65, 0.6, 0.55], first_step=3, attempt=2, ts_ms=2_000)
        # t4: diverged (NaN), stopped at rung 0.
        self.suggested(t4, 160)
        self.started(t4, 165)
        self.metrics(t4, [2.0, NAN, NAN])
        self.decision(t4, "STOP", 0, 220, reason="rung 0: loss is nan: diverged")
        self.event(t4, "TRIAL_PRUNED", "PRUNED", 225, 1, ended_attempt_id="a1",
                   attempt_end=trial_pb2.ATTEMPT_PRUNED)
        # t5: paused at rung 0 (promotion form), promoted, then stopped at rung 1.
        self.suggested(t5, 170)
        self.started(t5, 175)
        self.metrics(t5, [0.9, 0.85, 0.8, 0.7, 0.65, 0.6, 0.58, 0.57, 0.56])
        self.decision(t5, "PAUSE", 0, 230, reason="rung 0: paused until promoted")
        with self.later():  # 2 decisions
            self.decision(t5, "PROMOTE", 0, 600, cutoff=0.8)
            self.decision(t5, "STOP", 1, 700, cutoff=0.55, reason="rung 1: rank 2/3, stopped")
            self.event(t5, "TRIAL_PRUNED", "PRUNED", 710, 1, ended_attempt_id="a1",
                       attempt_end=trial_pb2.ATTEMPT_PRUNED)
        # t6: failed; t7: not started yet.
        self.suggested(t6, 180)
        self.started(t6, 185)
        self.metrics(t6, [1.5, 1.4])
        self.event(t6, "TRIAL_FAILED", "FAILED", 250, 1,
                   trial={"failures": 1, "failure_kind": trial_pb2.USER_ERROR},
                   ended_attempt_id="a1", attempt_end=trial_pb2.ATTEMPT_FAILED)
        self.suggested(t7, 190)
        # The other study: two completed trials, the larger value the better.
        for name, final in (("t8", 0.7), ("t9", 0.9)):
            trial_id = f"{other}-{name}"
            self.suggested(trial_id, 100, study_id=other)
            self.started(trial_id, 110, study_id=other)
            self.metrics(trial_id, [final - 0.2, final], study_id=other)
            self.event(trial_id, "TRIAL_COMPLETED", "COMPLETED", 300, 1, study_id=other,
                       trial={"has_final_value": True, "final_value": final})


def stub_for(service: Any) -> tuple[grpc.Channel, lineage_pb2_grpc.LineageServiceStub]:
    channel = grpc.insecure_channel(service.addr)
    return channel, lineage_pb2_grpc.LineageServiceStub(channel)


def summary_of(
    stub: lineage_pb2_grpc.LineageServiceStub, study_id: str
) -> lineage_pb2.StudySummary | None:
    try:
        return stub.GetStudySummary(lineage_pb2.GetStudySummaryRequest(study_id=study_id))
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def ingested(
    stub: lineage_pb2_grpc.LineageServiceStub, published: Published, late: bool
) -> bool:
    """Every record published so far is in the store (``late``: the held-back ones too)."""
    main, other = summary_of(stub, published.study), summary_of(stub, published.other)
    expected_points = sum(
        len(p) for t, p in published.points.items() if t.startswith(f"{published.study}-")
    )
    counts = (
        (expected_points, 9, 1, 3, 1, 1, 1) if late else (expected_points - 9, 6, 0, 2, 1, 3, 1)
    )
    return bool(
        main and other
        and (main.metric_points, main.decisions, main.completed, main.pruned, main.failed,
             main.running, main.suggested) == counts
        and (other.completed, other.metric_points) == (2, 4)
    )


def code_and_details(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as failed:
        call()
    return failed.value.code(), failed.value.details()


def test_the_dashboard_reads_of_published_studies(
    infra: Settings, start_service: Callable[..., Any], lineage_db: str  # noqa: F811
) -> None:
    service = start_service("services.lineage", {"LADDER_LINEAGE_DB": lineage_db})
    channel, stub = stub_for(service)
    published = Published(infra)
    try:
        missing = published.study
        for call in (
            lambda: stub.GetStudyCurves(lineage_pb2.GetStudyCurvesRequest(study_id=missing)),
            lambda: stub.GetStudyRungs(lineage_pb2.GetStudyRungsRequest(study_id=missing)),
        ):
            assert code_and_details(call) == (
                grpc.StatusCode.NOT_FOUND, f"study {missing!r} not found"
            )
        for call in (
            lambda: stub.GetStudyCurves(lineage_pb2.GetStudyCurvesRequest()),
            lambda: stub.GetStudyRungs(lineage_pb2.GetStudyRungsRequest()),
        ):
            assert code_and_details(call) == (
                grpc.StatusCode.INVALID_ARGUMENT, "study_id is required"
            )
        code, details = code_and_details(lambda: stub.GetStudyCurves(
            lineage_pb2.GetStudyCurvesRequest(study_id=missing, max_points_per_trial=-1)
        ))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_points_per_trial" in details
        # Bounded: no request may ask for an answer past the response size limit.
        code, details = code_and_details(lambda: stub.GetStudyCurves(
            lineage_pb2.GetStudyCurvesRequest(study_id=missing, max_trials=2**31 - 1)
        ))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details == "max_trials must be 0 (the default) or 1..2000, got 2147483647"

        published.publish()
        wait_for(lambda: ingested(stub, published, late=False), 60, "the first records")
        check_before_the_late_records(stub, published)
        published.release()
        wait_for(lambda: ingested(stub, published, late=True), 60, "every published record")

        check_trial_table(stub, published)
        check_curves(stub, published)
        check_rungs(stub, published)
        check_listings(stub, published)
    finally:
        published.close()
        channel.close()


def check_before_the_late_records(
    stub: lineage_pb2_grpc.LineageServiceStub, published: Published
) -> None:
    """What the service answers (and may keep for the next request) before t1 completed,
    t3 resumed and t5 was promoted and stopped."""
    t = published.t
    for _ in range(2):
        listed = stub.ListTrials(lineage_pb2.ListTrialsRequest(study_id=published.study))
        rows = {row.trial_id: row for row in listed.trials}
        assert (rows[t("t1")].state, rows[t("t1")].last_step) == ("RUNNING", 5)
        assert (rows[t("t3")].state, rows[t("t3")].attempts) == ("RESUMABLE", 1)
        assert (rows[t("t5")].stop_reason, rows[t("t5")].stop_rung) == (
            "rung 0: paused until promoted", 0
        )
        curves = stub.GetStudyCurves(
            lineage_pb2.GetStudyCurvesRequest(study_id=published.study)
        ).curves
        by_id = {c.trial_id: c for c in curves}
        assert [p.step for p in by_id[t("t1")].points] == [1, 2, 3, 4, 5]
        assert [p.value for p in by_id[t("t3")].points] == [1.0, 0.9, 0.8, 0.7]
        assert by_id[t("t5")].stop_reason == "rung 0: paused until promoted"


def check_trial_table(stub: lineage_pb2_grpc.LineageServiceStub, published: Published) -> None:
    listed = stub.ListTrials(lineage_pb2.ListTrialsRequest(study_id=published.study)).trials
    rows = {row.trial_id[len(published.study) + 1:]: row for row in listed}
    assert list(rows) == ["t1", "t2", "t3", "t4", "t5", "t6", "t7"]  # by first event
    t1, t2, t3, t4, t5, t6, t7 = rows.values()
    assert (t1.state, t1.has_final_value, t1.final_value, t1.last_step) == (
        "COMPLETED", True, 0.1, 10
    )
    assert {name: value.WhichOneof("value") for name, value in t1.params.items()} == {
        "lr": "float_value", "depth": "int_value", "optimizer": "str_value",
    }
    assert (t1.params["lr"].float_value, t1.params["depth"].int_value) == (0.01, 3)
    assert t1.params["optimizer"].str_value == "adam"
    assert (t1.algorithm, t1.predicted_mean, t1.predicted_std) == ("gp", 0.3, 0.05)
    assert (t1.first_ts_ms, t1.terminal_ts_ms, t1.attempts, t1.train_seconds) == (
        100, 500, 1, 40
    )
    assert (t1.stop_reason, t1.stop_rung, t1.stop_step) == ("", 0, 0)  # CONTINUE only
    assert (t2.state, t2.stop_rung, t2.stop_step) == ("PRUNED", 1, 9)
    assert t2.stop_reason == "rung 1 (9 steps): rank 3/3, loss 0.87 > cutoff 0.6"
    assert (t2.algorithm, t2.terminal_ts_ms) == ("random", 320)
    assert (t3.state, t3.attempts, t3.terminal_ts_ms, t3.last_step) == ("RUNNING", 2, 0, 6)
    assert (t4.state, t4.stop_reason, t4.stop_step) == (
        "PRUNED", "rung 0: loss is nan: diverged", 3
    )
    # Paused, promoted, stopped: the newest STOP or PAUSE decision is the one shown.
    assert (t5.stop_reason, t5.stop_rung, t5.stop_step) == ("rung 1: rank 2/3, stopped", 1, 9)
    assert (t6.state, t6.failure_kind, t6.stop_reason) == ("FAILED", trial_pb2.USER_ERROR, "")
    assert (t7.state, t7.attempts, t7.first_ts_ms, t7.last_step) == ("SUGGESTED", 0, 190, 0)
    assert (t7.predicted_mean, t7.predicted_std, t7.train_seconds) == (0, 0, 0)


def expected_curve(published: Published, trial_id: str) -> list[tuple[float, float]]:
    """The trial's published points, the newest attempt's per step, finite only."""
    by_step: dict[float, float] = {}
    for _attempt, step, value in sorted(published.points[trial_id]):
        by_step[step] = value  # a2 sorts after a1
    return [(s, v) for s, v in sorted(by_step.items()) if math.isfinite(v)]


def check_curves(stub: lineage_pb2_grpc.LineageServiceStub, published: Published) -> None:
    t = published.t
    curves = stub.GetStudyCurves(lineage_pb2.GetStudyCurvesRequest(study_id=published.study))
    assert (curves.study_id, curves.metric) == (published.study, "loss")
    assert (curves.total_trials, curves.total_points) == (6, 41)
    # Best first (minimize: t1's final value, then the last values), the diverged one
    # (no finite last value) after them; t7 has no points.
    order = [c.trial_id for c in curves.curves]
    assert order == [t("t1"), t("t3"), t("t5"), t("t2"), t("t6"), t("t4")]
    by_id = {c.trial_id: c for c in curves.curves}
    for trial_id, curve in by_id.items():
        assert [(p.step, p.value) for p in curve.points] == expected_curve(published, trial_id)
        assert curve.total_points == len(published.points[trial_id])
    resumed = by_id[t("t3")]
    assert [(p.step, p.value, p.attempt_id) for p in resumed.points][2:4] == [
        (3, 0.75, "a2"), (4, 0.65, "a2"),
    ]
    assert (resumed.state, resumed.total_points, resumed.stop_reason) == ("RUNNING", 8, "")
    diverged = by_id[t("t4")]
    assert [p.step for p in diverged.points] == [1]
    assert (diverged.stop_reason, diverged.stop_step) == ("rung 0: loss is nan: diverged", 3)
    assert (by_id[t("t2")].stop_step, by_id[t("t5")].stop_reason) == (
        9, "rung 1: rank 2/3, stopped"
    )

    small = stub.GetStudyCurves(lineage_pb2.GetStudyCurvesRequest(
        study_id=published.study, max_points_per_trial=4, max_trials=2
    ))
    assert [c.trial_id for c in small.curves] == [t("t1"), t("t3")]
    assert (small.total_trials, small.total_points) == (6, 41)
    best = [Point(s, v) for s, v in expected_curve(published, t("t1"))]
    shown = [(p.step, p.value) for p in small.curves[0].points]
    assert shown == [(p.step, p.value) for p in downsample(best, 4)]
    assert shown[0] == (1, 1.0) and shown[-1] == (10, 0.1) and len(shown) == 4

    other = stub.GetStudyCurves(lineage_pb2.GetStudyCurvesRequest(study_id=published.other))
    assert [c.trial_id for c in other.curves] == [f"{published.other}-t9", f"{published.other}-t8"]


def check_rungs(stub: lineage_pb2_grpc.LineageServiceStub, published: Published) -> None:
    rungs = stub.GetStudyRungs(lineage_pb2.GetStudyRungsRequest(study_id=published.study))
    assert rungs.study_id == published.study
    assert [
        (r.rung, r.resource, r.population, r.promoted, r.stopped, r.paused, r.cutoff)
        for r in rungs.rungs
    ] == [
        # t1, t2, t3 went on, t4 stopped, t5 paused then promoted (the newest: cutoff 0.8)
        (0, 3, 5, 4, 1, 1, 0.8),
        (1, 9, 3, 1, 2, 0, 0.55),
    ]
    none = stub.GetStudyRungs(lineage_pb2.GetStudyRungsRequest(study_id=published.other))
    assert list(none.rungs) == []


def check_listings(stub: lineage_pb2_grpc.LineageServiceStub, published: Published) -> None:
    listings = stub.ListStudyListings(lineage_pb2.ListStudyListingsRequest()).studies
    ours = [s for s in listings if s.study.study_id in (published.study, published.other)]
    assert [s.study.study_id for s in ours] == [published.other, published.study]  # newest first
    created = [s.study.created_unix_ms for s in listings]
    assert created == sorted(created, reverse=True)
    for listing in ours:
        assert listing.summary == summary_of(stub, listing.study.study_id)
    other, main = ours
    assert (other.study.config.direction, other.study.config.metric) == (
        study_pb2.MAXIMIZE, "acc"
    )
    assert (other.summary.best_trial_id, other.summary.best_value) == (
        f"{published.other}-t9", 0.9
    )
    assert (main.summary.best_trial_id, main.summary.pruned, main.summary.running) == (
        published.t("t1"), 3, 1
    )
