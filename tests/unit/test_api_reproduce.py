"""``ladder reproduce``'s parts without a stack: the local mode a script runs in
(``ladder.api.local``) and the curve comparison (``ladder.cli_run``)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import ladder
import pytest
from ladder.api import local
from ladder.cli_run import compare_curves, recorded_curve
from ladder.v1 import lineage_pb2

SPACE = {"x": {"type": "float", "low": 0, "high": 1}}


def plan(tmp_path: Path, **overrides: object) -> Path:
    values = {"trial_id": "st-1-t3", "study_id": "st-1", "params": {"x": 0.25}, "seed": 11,
              "metric": "loss", "output": str(tmp_path / "curve.jsonl"), "max_steps": 5,
              **overrides}
    path = tmp_path / "plan.json"
    local.Plan(**values).save(path)  # type: ignore[arg-type]
    return path


def train(trial: ladder.Trial) -> float:
    loss = math.nan
    for step in range(trial.restore({}), trial.max_steps + 1):
        loss = trial["x"] + random.random() / step
        trial.report(loss, step=step)
        if trial.should_stop():
            break
    return loss


def test_a_study_in_the_local_mode_yields_exactly_the_recorded_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(local.PLAN_ENV, str(plan(tmp_path)))
    study = ladder.create_study(SPACE, metric="loss", max_steps=5)  # no server needed
    seen = []
    for trial in study.trials(handle_signals=False):
        seen.append((trial.trial_id, trial.params, trial.seed))
        with trial:
            trial.complete(train(trial))
    assert seen == [("st-1-t3", {"x": 0.25}, 11)]
    curve, end = local.read_curve(tmp_path / "curve.jsonl")
    assert sorted(curve) == [1, 2, 3, 4, 5] and end["outcome"] == "completed"
    random.seed(11)  # the trial's seed: the same draws again
    assert curve[1] == pytest.approx(0.25 + random.random())
    assert study.best_value == end["value"] and study.best_params == {"x": 0.25}


def test_a_trial_stopped_at_step_n_stops_there_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(local.PLAN_ENV, str(plan(tmp_path, stop_after=3.0)))
    study = ladder.optimize(train, SPACE, n_trials=50, n_workers=4, max_steps=5)
    curve, end = local.read_curve(tmp_path / "curve.jsonl")
    assert sorted(curve) == [1, 2, 3] and end["outcome"] == "pruned"
    assert study.best_trial is None


def point(step: float, value: float, ts: int) -> lineage_pb2.MetricPoint:
    return lineage_pb2.MetricPoint(step=step, value=value, ts_ms=ts)


def test_the_recorded_curve_keeps_the_latest_attempt_per_step() -> None:
    lineage = lineage_pb2.TrialLineage(metrics=[
        point(1, 0.9, 1), point(2, 0.8, 2), point(3, 0.7, 3),  # first attempt
        point(3, 0.65, 10), point(4, 0.6, 11),  # resumed after step 2
    ])
    assert recorded_curve(lineage) == {1: 0.9, 2: 0.8, 3: 0.65, 4: 0.6}


def test_curves_match_within_the_tolerance_and_name_what_differs() -> None:
    recorded = {1.0: 1.0, 2.0: 0.5, 3.0: math.nan}
    same = compare_curves(recorded, {1.0: 1.0, 2.0: 0.5 + 1e-9, 3.0: math.nan})
    assert same.matches and same.steps == 3 and same.max_deviation < 1e-8
    off = compare_curves(recorded, {1.0: 1.0, 2.0: 0.6}, rtol=1e-5)
    assert not off.matches and off.differing == [(2.0, 0.5, 0.6)] and off.missing == [3.0]
    assert compare_curves({1.0: 1.0}, {1.0: 1.05}, rtol=0.1).matches
