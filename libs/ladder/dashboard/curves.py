"""Learning curves: every trial's curve (as ``GetStudyCurves`` down-sampled it) with a
mark where the early-stop service stopped or paused it, its reason on hover; and one
trial's curve with every decision taken on it.

All the curves of one state are one trace, the trials separated by a gap: a plot of
500 traces is slow to draw and to hover, one trace per state is not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ladder.dashboard.figures import (
    Figure,
    empty,
    layout,
    scatter_type,
    state_color,
    state_order,
)
from ladder.dashboard.sampling import decimate, rounded
from ladder.v1 import events_pb2, lineage_pb2

# Points of one trial's curve on its own page (lineage returns every one it stored).
MAX_TRIAL_POINTS = 2000
# Decision markers, in drawing order.
ACTION_COLORS = {"STOP": "#d62728", "PAUSE": "#9467bd", "PROMOTE": "#2ca02c",
                 "CONTINUE": "#1f77b4"}


def action_name(action: int) -> str:
    """``STOP``; "" for the unset or an unknown action."""
    known = action in events_pb2.Action.values() and action != 0
    return events_pb2.Action.Name(action) if known else ""


def value_at(points: Sequence[lineage_pb2.MetricPoint], step: float) -> float | None:
    """The curve's value at ``step``: the last point at or before it (the first point
    when the curve starts after it); None for an empty curve."""
    found = None
    for p in points:
        if p.step <= step:
            found = p.value
        elif found is None:
            return p.value
        else:
            break
    return found


def _axis_titles(metric: str) -> dict[str, Any]:
    return {"xaxis": {"title": {"text": "step"}},
            "yaxis": {"title": {"text": metric or "value"}}}


def study_curves(curves: lineage_pb2.StudyCurves) -> Figure:
    """One line per trial, coloured by state; a marker where each was stopped."""
    title = "Learning curves"
    if not curves.curves:
        return empty(title, "no metric reported yet")
    by_state: dict[str, list[lineage_pb2.TrialCurve]] = {}
    for curve in curves.curves:
        by_state.setdefault(curve.state, []).append(curve)
    data: list[dict[str, Any]] = []
    for state in state_order(set(by_state)):
        xs: list[float | None] = []
        ys: list[float | None] = []
        ids: list[str | None] = []
        for curve in by_state[state]:
            for p in curve.points:
                xs.append(p.step)
                ys.append(p.value)
                ids.append(curve.trial_id)
            xs.append(None)
            ys.append(None)
            ids.append(None)
        data.append({
            # Lines only: one SVG path per state draws fast at any length (no WebGL).
            "type": "scatter", "mode": "lines", "name": f"{state.lower()} "
            f"({len(by_state[state])})", "x": rounded(xs), "y": rounded(ys), "customdata": ids,
            "connectgaps": False, "line": {"color": state_color(state), "width": 1},
            "opacity": 0.6, "hovertemplate": "%{customdata}<br>step %{x}: %{y}<extra></extra>",
        })
    stopped = [c for c in curves.curves if c.stop_reason]
    if stopped:
        data.append({
            "type": "scatter", "mode": "markers", "name": "stopped here",
            "x": [c.stop_step for c in stopped],
            "y": rounded([value_at(c.points, c.stop_step) for c in stopped]),
            "customdata": [[c.trial_id, c.stop_reason] for c in stopped],
            "marker": {"symbol": "x", "size": 8, "color": "#d62728"},
            "hovertemplate": "%{customdata[0]} stopped at step %{x}<br>%{customdata[1]}"
                             "<extra></extra>",
        })
    shown = len(curves.curves)
    note = f"{shown} of {curves.total_trials} trials, {curves.total_points:,} points recorded"
    return {
        "data": data,
        "layout": layout(f"{title}: {note}", **_axis_titles(curves.metric)),
    }


def trial_curve(lineage: lineage_pb2.TrialLineage) -> Figure:
    """One trial's curve, one line per attempt, and a marker per decision."""
    title = "Learning curve and decisions"
    if not lineage.metrics and not lineage.decisions:
        return empty(title, "no metric reported yet")
    by_attempt: dict[str, list[lineage_pb2.MetricPoint]] = {}
    for p in lineage.metrics:
        by_attempt.setdefault(p.attempt_id, []).append(p)
    data: list[dict[str, Any]] = []
    for attempt, points in by_attempt.items():
        points.sort(key=lambda p: p.step)
        keep = decimate([p.step for p in points], [p.value for p in points], MAX_TRIAL_POINTS)
        data.append({
            "type": scatter_type(len(keep)), "mode": "lines+markers",
            "name": attempt or "metric",
            "x": rounded([points[i].step for i in keep]),
            "y": rounded([points[i].value for i in keep]),
            "marker": {"size": 4}, "hovertemplate": "step %{x}: %{y}<extra></extra>",
        })
    ordered = sorted(lineage.metrics, key=lambda p: p.step)
    for action in ACTION_COLORS:
        chosen = [d for d in lineage.decisions if action_name(d.action) == action]
        if not chosen:
            continue
        data.append({
            "type": "scatter", "mode": "markers", "name": action.lower(),
            "x": [d.resource for d in chosen],
            "y": rounded([d.smoothed_value if d.smoothed_value
                          else value_at(ordered, d.resource) for d in chosen]),
            "customdata": [[d.rung, d.reason] for d in chosen],
            "marker": {"symbol": "diamond", "size": 10, "color": ACTION_COLORS[action]},
            "hovertemplate": f"{action} at rung %{{customdata[0]}} (step %{{x}})<br>"
                             "%{customdata[1]}<extra></extra>",
        })
    return {"data": data, "layout": layout(title, **_axis_titles(lineage.metric))}
