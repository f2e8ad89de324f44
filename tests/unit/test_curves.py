"""ladder.curves: one point per step (the newest attempt's), down-sampling that keeps the
first, the last and the extremes, non-finite values left out, and which trials' curves
are shown first."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ladder.curves import (
    Candidate,
    Point,
    display_curve,
    downsample,
    merge_attempts,
    pick_trials,
)


def curve(values: list[float]) -> list[Point]:
    return [Point(step=float(i), value=v) for i, v in enumerate(values)]


def test_a_curve_within_the_budget_is_returned_whole() -> None:
    points = curve([3.0, 2.0, 1.0])
    assert downsample(points, 3) == points
    assert downsample(points, 64) == points


def test_downsampling_keeps_first_last_and_each_buckets_extremes_in_step_order() -> None:
    # 2 + 8 interior points into 6 slots: 2 buckets of 4, each keeps its min and max.
    values = [5.0, 4.0, 9.0, 1.0, 3.0, 2.0, 0.5, 8.0, 2.5, 6.0]
    kept = downsample(curve(values), 6)
    assert [p.step for p in kept] == [0, 2, 3, 6, 7, 9]
    assert [p.value for p in kept] == [5.0, 9.0, 1.0, 0.5, 8.0, 6.0]


def test_the_minimum_survives_where_striding_would_lose_it() -> None:
    values = [1.0] * 1000
    values[617] = -5.0  # a single dip
    kept = downsample(curve(values), 16)
    assert len(kept) <= 16
    assert min(p.value for p in kept) == -5.0
    assert striding(curve(values), 16) and min(p.value for p in striding(curve(values), 16)) == 1


def striding(points: list[Point], n: int) -> list[Point]:
    return points[:: math.ceil(len(points) / n)]


@pytest.mark.parametrize(
    ("budget", "expected_steps"),
    [(1, [4]), (2, [0, 4]), (3, [0, 2, 4])],
)
def test_tiny_budgets(budget: int, expected_steps: list[int]) -> None:
    # With one interior slot, the point farthest from the first-to-last line is kept.
    points = curve([0.0, 1.0, 9.0, 3.0, 4.0])
    assert [p.step for p in downsample(points, budget)] == expected_steps


def test_a_budget_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        downsample(curve([1.0, 2.0]), 0)


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=400),
    budget=st.integers(2, 80),
)
def test_downsampling_properties(values: list[float], budget: int) -> None:
    points = curve(values)
    kept = downsample(points, budget)
    assert len(kept) <= budget
    if len(points) <= budget:
        assert kept == points
    assert kept[0] == points[0] and kept[-1] == points[-1]
    steps = [p.step for p in kept]
    assert steps == sorted(set(steps))
    assert set(kept) <= set(points)
    if budget >= 4:
        assert min(p.value for p in kept) == min(values)
        assert max(p.value for p in kept) == max(values)


def test_a_resumed_trial_keeps_the_newest_attempts_point_per_step() -> None:
    points = [
        Point(1, 0.9, ts_ms=100, attempt_id="a1", attempt_number=1),
        Point(2, 0.8, ts_ms=200, attempt_id="a1", attempt_number=1),
        Point(3, 0.7, ts_ms=300, attempt_id="a1", attempt_number=1),
        # Attempt 2 resumed from the step-2 checkpoint, on a host whose clock is behind.
        Point(3, 0.6, ts_ms=250, attempt_id="a2", attempt_number=2),
        Point(4, 0.5, ts_ms=260, attempt_id="a2", attempt_number=2),
    ]
    merged = merge_attempts(reversed(points))
    assert [(p.step, p.value) for p in merged] == [(1, 0.9), (2, 0.8), (3, 0.6), (4, 0.5)]
    # Without attempt numbers, the later report wins.
    unnumbered = [p._replace(attempt_number=0) for p in points]
    assert [p.value for p in merge_attempts(unnumbered)] == [0.9, 0.8, 0.7, 0.5]


def test_non_finite_values_are_left_out_of_the_displayed_curve() -> None:
    points = curve([1.0, math.nan, 0.5, math.inf, 0.25, -math.inf])
    shown = display_curve(points, 64)
    assert [(p.step, p.value) for p in shown] == [(0, 1.0), (2, 0.5), (4, 0.25)]
    assert display_curve(curve([math.nan]), 64) == []


def test_store_rows_go_in_as_they_are_read() -> None:
    # (step, value, ts, attempt, number, trial): a missing value (NULL) is left out,
    # items after the fifth are ignored.
    rows = [(1.0, 0.5, 10, "a1", 0, "t"), (2.0, None, 20, "a1", 0, "t"),
            (3.0, 0.25, 30, "a1", 0, "t")]
    assert display_curve(rows, 64) == [rows[0], rows[2]]
    assert downsample(rows[:1] + rows[2:], 1) == [rows[2]]


def test_a_newer_attempts_nan_hides_the_older_value_at_that_step() -> None:
    points = [
        Point(1, 0.9, attempt_number=1),
        Point(2, 0.8, attempt_number=1),
        Point(2, math.nan, attempt_number=2),
    ]
    assert [p.step for p in display_curve(points, 64)] == [1]


def test_picking_minimize_best_first_then_most_recent_without_value() -> None:
    candidates = [
        Candidate("t1", 0.5, 10),
        Candidate("t2", None, 50),
        Candidate("t3", 0.1, 20),
        Candidate("t4", 0.5, 30),  # ties t1, more recent
        Candidate("t5", math.nan, 40),
        Candidate("t6", None, 60),
    ]
    assert [c.trial_id for c in pick_trials(candidates, 10, maximize=False)] == [
        "t3", "t4", "t1", "t6", "t2", "t5",
    ]
    assert [c.trial_id for c in pick_trials(candidates, 2, maximize=True)] == ["t4", "t1"]
    assert pick_trials(candidates, 0, maximize=True) == []
