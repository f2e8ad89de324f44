"""What `make demo` counts as a failure (workers.demo.demo_problems)."""

from __future__ import annotations

from ladder.v1 import lineage_pb2, study_pb2

from workers.demo import demo_problems

CONFIG = study_pb2.StudyConfig(scheduler=study_pb2.SchedulerConfig(max_resource=3))


def best_with(steps: int) -> lineage_pb2.TrialLineage:
    best = lineage_pb2.TrialLineage(trial_id="t1")
    for step in range(1, steps + 1):
        best.metrics.add(step=step, value=1.0 / step)
    return best


def test_a_full_run_has_no_problem() -> None:
    summary = lineage_pb2.StudySummary(completed=40, pruned=20)
    assert demo_problems(summary, {"w0": 0}, best_with(3), CONFIG, min_finished=60) == []


def test_every_problem_is_named() -> None:
    summary = lineage_pb2.StudySummary(completed=10, pruned=5, failed=2)
    problems = demo_problems(summary, {"w0": 0, "w1": 3, "w2": None}, None, CONFIG, 60)
    assert problems == [
        "only 15 trials completed or pruned (need 60)",
        "2 trials failed",
        "workers exited abnormally: {'w1': 3, 'w2': None}",
        "no best trial",
    ]


def test_a_best_trial_with_missing_metric_points_is_a_problem() -> None:
    summary = lineage_pb2.StudySummary(completed=60)
    assert demo_problems(summary, {}, best_with(2), CONFIG, 60) == [
        "the lineage of the best trial has 2 of 3 metric points (lineage store missed records)"
    ]
