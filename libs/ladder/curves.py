"""Learning curves for display: one point per step, down-sampled, and which trials to show.

Pure code (no I/O): lineage's GetStudyCurves feeds it the stored points of a study and
sends what it returns, so a dashboard of a 20,000-trial study receives a few hundred
curves of a few dozen points each instead of every point.

- ``merge_attempts``: a trial resumed from a checkpoint reports some steps again; per
  step the newest attempt's point is kept (attempt number, then report time, then
  attempt id), and the curve is sorted by step.
- ``downsample``: at most ``max_points`` points, first and last kept; the interior is
  cut into equal-count buckets and each bucket keeps its minimum and its maximum (in
  step order), so every local extreme that matters (the curve's minimum and maximum
  always) survives, unlike plain striding.
- ``display_curve``: both, after leaving out non-finite values. A NaN (a diverged
  trial; the store keeps it as NULL, read as None) or an infinity has no place on a
  plot axis: the
  curve simply has no point at that step. The caller's ``total_points`` still counts
  them, and the trial's stop mark (its decision's step) still shows where it ended.
- ``pick_trials``: which curves to send when there are more than ``max_trials``: those
  with a value (the final value, else the last point's) best first for the study's
  direction, ties most recent first; then those without a finite value, most recent
  first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple


class Point(NamedTuple):
    """A reported point. The functions below take any tuple laid out like this one
    (extra items after these five are ignored), so rows read from a store need not be
    copied into Points first; ``value`` None is a missing value, like NaN."""

    step: float
    value: float | None
    ts_ms: int = 0
    attempt_id: str = ""
    attempt_number: int = 0  # 0: unknown (ranks below any numbered attempt)


STEP, VALUE, TS_MS, ATTEMPT_ID, ATTEMPT_NUMBER = range(5)
PointLike = tuple[Any, ...]


class Candidate(NamedTuple):
    trial_id: str
    value: float | None  # the final value, else the last point's; None: none
    recent_ms: int  # when it last reported (or changed state)


def _newness(point: PointLike) -> tuple[int, int, str]:
    return (point[ATTEMPT_NUMBER], point[TS_MS], point[ATTEMPT_ID])


def merge_attempts(points: Iterable[PointLike]) -> list[PointLike]:
    """One point per step (the newest attempt's), sorted by step."""
    points = list(points)
    if all(a[STEP] < b[STEP] for a, b in zip(points, points[1:], strict=False)):
        return points  # already one point per step, in order: most trials' curves
    by_step: dict[float, PointLike] = {}
    for point in points:
        kept = by_step.get(point[STEP])
        if kept is None or _newness(point) > _newness(kept):
            by_step[point[STEP]] = point
    return [by_step[step] for step in sorted(by_step)]


def downsample(points: Sequence[PointLike], max_points: int) -> list[PointLike]:
    """At most ``max_points`` of ``points`` (sorted by step, finite values): the first and
    the last, and per interior bucket its minimum and maximum."""
    if max_points < 1:
        raise ValueError(f"max_points must be at least 1, got {max_points}")
    if len(points) <= max_points:
        return list(points)
    if max_points == 1:
        return [points[-1]]
    first, last = points[0], points[-1]
    interior = points[1:-1]
    slots = max_points - 2
    if slots == 0:
        return [first, last]
    if slots == 1:
        return [first, _farthest_from_chord(first, last, interior), last]
    buckets = slots // 2
    values = [p[VALUE] for p in interior]
    kept: list[PointLike] = [first]
    for b in range(buckets):
        start, stop = b * len(interior) // buckets, (b + 1) * len(interior) // buckets
        bucket = values[start:stop]
        low, high = bucket.index(min(bucket)), bucket.index(max(bucket))
        kept.extend(interior[start + i] for i in sorted({low, high}))
    kept.append(last)
    return kept


def _farthest_from_chord(
    first: PointLike, last: PointLike, interior: Sequence[PointLike]
) -> PointLike:
    """The interior point farthest (vertically) from the line from ``first`` to ``last``."""
    span = last[STEP] - first[STEP]

    def distance(point: PointLike) -> float:
        along = (point[STEP] - first[STEP]) / span if span else 0.0
        return abs(point[VALUE] - (first[VALUE] + along * (last[VALUE] - first[VALUE])))

    return max(interior, key=distance)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def display_curve(points: Iterable[PointLike], max_points: int) -> list[PointLike]:
    """The curve to plot: newest attempt per step, finite values only, down-sampled."""
    merged = merge_attempts(points)
    return downsample([p for p in merged if _finite(p[VALUE])], max_points)


def pick_trials(
    candidates: Iterable[Candidate], max_trials: int, maximize: bool
) -> list[Candidate]:
    """At most ``max_trials`` candidates: finite values best first (most recent first
    among equals), then the rest most recent first; trial id breaks remaining ties."""
    sign = -1.0 if maximize else 1.0
    valued, rest = [], []
    for candidate in candidates:
        value = candidate.value
        if value is not None and math.isfinite(value):
            valued.append((sign * value, -candidate.recent_ms, candidate.trial_id, candidate))
        else:
            rest.append((-candidate.recent_ms, candidate.trial_id, candidate))
    valued.sort()
    rest.sort()
    ordered = [entry[-1] for entry in valued] + [entry[-1] for entry in rest]
    return ordered[:max(max_trials, 0)]
