"""A study as lineage would answer the dashboard about it, made up: any number of
trials and metric points, every state, ASHA-like stop decisions with reasons, a
search space with a log-scaled float, an int and a categorical. Deterministic (seeded),
so a test can assert on it and a benchmark can rebuild the same study.

``FakeLineage`` serves such studies over gRPC (the dashboard's reads only), so the
dashboard's HTTP layer can be tested in one process without a broker.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc

from ladder.params import fill_params
from ladder.v1 import (
    events_pb2,
    lineage_pb2,
    lineage_pb2_grpc,
    space_pb2,
    study_pb2,
    trial_pb2,
)

MAX_STEP = 27
RUNGS = (1, 3, 9)


def study_config(max_trials: int, name: str = "synthetic") -> study_pb2.StudyConfig:
    space = space_pb2.SearchSpace(parameters=[
        space_pb2.Parameter(name="lr", float_range=space_pb2.FloatRange(
            low=1e-5, high=1e-1, scale=space_pb2.SCALE_LOG)),
        space_pb2.Parameter(name="depth", int_range=space_pb2.IntRange(low=1, high=8)),
        space_pb2.Parameter(name="optimizer", categorical=space_pb2.Categorical(
            choices=["adam", "sgd", "rmsprop"])),
        space_pb2.Parameter(name="dropout", float_range=space_pb2.FloatRange(low=0, high=0.5)),
    ])
    return study_pb2.StudyConfig(
        name=name, space=space, direction=study_pb2.MAXIMIZE, metric="val_accuracy",
        algorithm=study_pb2.TPE, max_trials=max_trials, dataset_id="digits@1",
        code_commit="0123abcd",
        scheduler=study_pb2.SchedulerConfig(kind=study_pb2.ASHA, min_resource=1,
                                            max_resource=MAX_STEP, reduction_factor=3),
    )


@dataclass
class SyntheticStudy:
    study: study_pb2.Study
    summary: lineage_pb2.StudySummary
    trials: list[lineage_pb2.TrialSummary]
    curves: dict[str, list[lineage_pb2.MetricPoint]]  # every point, by trial
    rungs: lineage_pb2.StudyRungs
    lineages: dict[str, lineage_pb2.TrialLineage] = field(default_factory=dict)

    def study_curves(self, max_trials: int = 500, max_points: int = 64) -> lineage_pb2.StudyCurves:
        """What GetStudyCurves answers: the best trials' curves first, each cut to
        ``max_points`` evenly spaced points (first and last kept)."""
        ranked = sorted(self.trials, key=lambda t: -(t.final_value if t.has_final_value
                                                     else _last(self.curves[t.trial_id])))
        out = lineage_pb2.StudyCurves(
            study_id=self.study.study_id, metric=self.study.config.metric,
            total_trials=sum(1 for pts in self.curves.values() if pts),
            total_points=sum(len(pts) for pts in self.curves.values()),
        )
        for t in ranked[:max_trials]:
            points = self.curves[t.trial_id]
            step = max(1, math.ceil(len(points) / max_points))
            kept = points[::step]
            if points and kept[-1] is not points[-1]:
                kept.append(points[-1])
            out.curves.append(lineage_pb2.TrialCurve(
                trial_id=t.trial_id, state=t.state, points=kept, total_points=len(points),
                stop_reason=t.stop_reason, stop_step=t.stop_step))
        return out


def _last(points: list[lineage_pb2.MetricPoint]) -> float:
    return points[-1].value if points else -math.inf


def synthetic_study(
    study_id: str = "synthetic", trials: int = 200, points_per_trial: int = MAX_STEP,
    seed: int = 0, running: int = 3, created_ms: int = 1_700_000_000_000,
) -> SyntheticStudy:
    """``trials`` trials (the last ``running`` still running, a few failed, about two
    thirds pruned at a rung), ``points_per_trial`` metric points for one that runs to
    the end (fewer for a pruned one)."""
    rng = random.Random(seed)
    config = study_config(trials)
    made: list[lineage_pb2.TrialSummary] = []
    curves: dict[str, list[lineage_pb2.MetricPoint]] = {}
    rung_stats = {r: lineage_pb2.RungStats(rung=k, resource=r) for k, r in enumerate(RUNGS)}
    for i in range(trials):
        trial_id = f"{study_id}-t{i}"
        params = {"lr": 10 ** rng.uniform(-5, -1), "depth": rng.randint(1, 8),
                  "optimizer": rng.choice(["adam", "sgd", "rmsprop"]),
                  "dropout": rng.uniform(0, 0.5)}
        quality = (0.9 - 0.08 * abs(math.log10(params["lr"]) + 3)
                   + (0.03 if params["optimizer"] == "adam" else 0) + rng.gauss(0, 0.01))
        roll = rng.random()
        state = ("RUNNING" if i >= trials - running else "FAILED" if roll < 0.03
                 else "PRUNED" if roll < 0.68 else "COMPLETED")
        stop_rung = rng.choice(RUNGS) if state == "PRUNED" else 0
        end = {"PRUNED": stop_rung, "FAILED": rng.randint(1, MAX_STEP)}.get(state, MAX_STEP)
        if state == "RUNNING":
            end = rng.randint(1, MAX_STEP)
        count = max(1, round(points_per_trial * end / MAX_STEP))
        points = []
        for k in range(count):
            step = end * (k + 1) / count
            value = quality * (1 - math.exp(-step / 4)) + rng.gauss(0, 0.005)
            points.append(lineage_pb2.MetricPoint(step=step, value=value,
                                                  ts_ms=created_ms + i * 1000 + k,
                                                  attempt_id=f"{trial_id}-a1"))
        curves[trial_id] = points
        summary = lineage_pb2.TrialSummary(
            trial_id=trial_id, state=state, last_step=end, algorithm="tpe",
            first_ts_ms=created_ms + i * 1000, attempts=1, train_seconds=end * 0.5,
            predicted_mean=quality, predicted_std=0.02,
        )
        fill_params(summary.params, params)
        if state in ("COMPLETED", "PRUNED", "FAILED"):
            summary.terminal_ts_ms = created_ms + i * 1000 + 900
        if state == "COMPLETED":
            summary.has_final_value = True
            summary.final_value = points[-1].value
        if state == "PRUNED":
            summary.stop_reason = (f"rung {RUNGS.index(stop_rung)} (resource {stop_rung}): "
                                   f"below the cutoff, rank {rng.randint(2, 9)} of 9")
            summary.stop_rung = RUNGS.index(stop_rung)
            summary.stop_step = stop_rung
        if state == "FAILED":
            summary.failure_kind = trial_pb2.OUT_OF_MEMORY
        for r, stats in rung_stats.items():
            if end >= r and state != "RUNNING":
                stats.population += 1
                if state == "PRUNED" and stop_rung == r:
                    stats.stopped += 1
                elif end > r:
                    stats.promoted += 1
                stats.cutoff = 0.5 + 0.1 * stats.rung
        made.append(summary)
    counts = {s: sum(t.state == s for t in made) for s in ("RUNNING", "COMPLETED", "PRUNED",
                                                           "FAILED")}
    done = [t for t in made if t.has_final_value]
    best = max(done, key=lambda t: t.final_value) if done else None
    summary = lineage_pb2.StudySummary(
        study_id=study_id, suggested=trials, running=counts["RUNNING"],
        completed=counts["COMPLETED"], pruned=counts["PRUNED"], failed=counts["FAILED"],
        has_best=best is not None, best_value=best.final_value if best else 0.0,
        best_trial_id=best.trial_id if best else "",
        metric_points=sum(len(p) for p in curves.values()),
        decisions=sum(s.population for s in rung_stats.values()),
    )
    study = study_pb2.Study(study_id=study_id, config=config, state=study_pb2.STUDY_ACTIVE,
                            created_unix_ms=created_ms, trials_suggested=trials)
    rungs = lineage_pb2.StudyRungs(study_id=study_id, rungs=list(rung_stats.values()))
    return SyntheticStudy(study, summary, made, curves, rungs)


def trial_lineage(made: SyntheticStudy, trial_id: str) -> lineage_pb2.TrialLineage:
    """GetTrialLineage of one synthetic trial: its curve, its stop decision."""
    summary = next(t for t in made.trials if t.trial_id == trial_id)
    config = made.study.config
    lineage = lineage_pb2.TrialLineage(
        trial_id=trial_id, study_id=made.study.study_id, seed=7, state=summary.state,
        metrics=made.curves[trial_id], has_final_value=summary.has_final_value,
        final_value=summary.final_value, dataset_id=config.dataset_id,
        code_commit=config.code_commit, algorithm=summary.algorithm,
        predicted_mean=summary.predicted_mean, predicted_std=summary.predicted_std,
        metric=config.metric, train_seconds=summary.train_seconds,
    )
    for key, value in summary.params.items():
        lineage.params[key].CopyFrom(value)
    lineage.attempts.append(lineage_pb2.AttemptRecord(
        attempt_id=f"{trial_id}-a1", attempt_number=1, worker_id="worker-1",
        hostname="gpu-1", outcome=summary.state.lower(), started_ms=summary.first_ts_ms,
        ended_ms=summary.terminal_ts_ms, checkpoint_uri=f"s3://ckpt/{trial_id}/1",
    ))
    if summary.stop_reason:
        lineage.decisions.append(events_pb2.Decision(
            study_id=made.study.study_id, trial_id=trial_id, action=events_pb2.STOP,
            rung=summary.stop_rung, resource=summary.stop_step, cutoff=0.6, rank=5,
            population=9, reason=summary.stop_reason, scheduler="asha"))
    return lineage


class FakeLineage(lineage_pb2_grpc.LineageServiceServicer):
    """The dashboard's reads of lineage, answered from synthetic studies."""

    def __init__(self, studies: Iterable[SyntheticStudy]) -> None:
        self.studies = {s.study.study_id: s for s in studies}
        self.calls: list[str] = []

    def _study(self, study_id: str, context: grpc.ServicerContext) -> SyntheticStudy:
        found = self.studies.get(study_id)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"study {study_id!r} not found")
        return found  # type: ignore[return-value]

    def ListStudyListings(self, request, context):  # noqa: N802 - gRPC names
        self.calls.append("ListStudyListings")
        return lineage_pb2.StudyListings(studies=[
            lineage_pb2.StudyListing(study=s.study, summary=s.summary)
            for s in self.studies.values()
        ])

    def GetStudySummary(self, request, context):  # noqa: N802
        self.calls.append("GetStudySummary")
        return self._study(request.study_id, context).summary

    def ListTrials(self, request, context):  # noqa: N802
        self.calls.append("ListTrials")
        return lineage_pb2.ListTrialsResponse(trials=self._study(request.study_id,
                                                                 context).trials)

    def GetStudyCurves(self, request, context):  # noqa: N802
        self.calls.append("GetStudyCurves")
        return self._study(request.study_id, context).study_curves(
            request.max_trials or 500, request.max_points_per_trial or 64)

    def GetStudyRungs(self, request, context):  # noqa: N802
        self.calls.append("GetStudyRungs")
        return self._study(request.study_id, context).rungs

    def GetTrialLineage(self, request, context):  # noqa: N802
        self.calls.append("GetTrialLineage")
        for s in self.studies.values():
            if request.trial_id in s.curves:
                return trial_lineage(s, request.trial_id)
        context.abort(grpc.StatusCode.NOT_FOUND, f"trial {request.trial_id!r} not found")
