"""How the objective depends on each parameter: slice plots (the objective against
each parameter alone) and the parameter importances (parallel coordinates are in
``ladder.dashboard.parallel``).

Categorical parameters sit on an axis of their choices in the search space's order,
log-scaled ones on a log axis. The caller picks the trials drawn (at most
``trials.MAX_POINTS``: ``trials.sampled_completed``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ladder.dashboard.axes import ParamAxis
from ladder.dashboard.figures import Figure, empty, layout, scatter_type, state_color
from ladder.dashboard.importance import Importances
from ladder.dashboard.sampling import rounded
from ladder.dashboard.trials import COMPLETED, Trial, sampled_completed

SLICE_COLUMNS = 3


def _axis_names(index: int) -> tuple[str, str]:
    suffix = "" if index == 0 else str(index + 1)
    return f"x{suffix}", f"y{suffix}"


def slices(trials: Sequence[Trial], axes: Sequence[ParamAxis], metric: str,
           maximize: bool, shown: Sequence[Trial] | None = None) -> Figure:
    """One panel per parameter: the objective against its value."""
    title = "Slice plots"
    shown = sampled_completed(trials, maximize) if shown is None else shown
    if not shown or not axes:
        return empty(title, "no completed trial yet")
    rows = (len(axes) + SLICE_COLUMNS - 1) // SLICE_COLUMNS
    gap_x, gap_y = 0.06, 0.5 / max(rows, 1) * 0.3
    width = (1 - gap_x * (SLICE_COLUMNS - 1)) / SLICE_COLUMNS
    height = (1 - gap_y * (rows - 1)) / rows
    data: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    for k, axis in enumerate(axes):
        column, row_index = k % SLICE_COLUMNS, k // SLICE_COLUMNS
        xname, yname = _axis_names(k)
        picked = [t for t in shown if t.params.get(axis.name) is not None]
        xs: list[Any] = [t.params[axis.name] for t in picked]
        xs = [str(x) for x in xs] if axis.categorical else rounded(xs)
        data.append({
            "type": scatter_type(len(picked)), "mode": "markers", "name": axis.name,
            "showlegend": False,
            "x": xs, "y": rounded([t.value for t in picked]), "xaxis": xname, "yaxis": yname,
            "customdata": [t.trial_id for t in picked],
            "marker": {"size": 4, "opacity": 0.5, "color": state_color(COMPLETED)},
            "hovertemplate": f"%{{customdata}}<br>{axis.name} %{{x}}: %{{y}}<extra></extra>",
        })
        x0 = column * (width + gap_x)
        y1 = 1 - row_index * (height + gap_y)
        xaxis: dict[str, Any] = {"domain": [x0, x0 + width], "anchor": yname,
                                 "title": {"text": axis.name, "standoff": 2}}
        if axis.categorical:
            xaxis.update(type="category", categoryorder="array", categoryarray=list(axis.choices))
        elif axis.log:
            xaxis["type"] = "log"
        extra["xaxis" if k == 0 else f"xaxis{k + 1}"] = xaxis
        extra["yaxis" if k == 0 else f"yaxis{k + 1}"] = {
            "domain": [max(0.0, y1 - height), y1], "anchor": xname,
            "title": {"text": metric if column == 0 else ""},
        }
    return {
        "data": data,
        "layout": layout(title, height=max(320, 260 * rows), showlegend=False, **extra),
    }


def importance_figure(found: Importances) -> Figure:
    title = "Parameter importances"
    if not found.names:
        return empty(title, found.note or "not enough completed trials yet")
    return {
        "data": [{
            "type": "bar", "orientation": "h", "x": found.values[::-1], "y": found.names[::-1],
            "marker": {"color": "#1f77b4"},
            "hovertemplate": "%{y}: %{x:.1%}<extra></extra>",
        }],
        "layout": layout(
            f"{title} (random forest, permutation; {found.trials_used} trials)",
            xaxis={"title": {"text": "share of the explained variation"}, "tickformat": ".0%"},
            height=max(260, 60 + 28 * len(found.names)),
            margin={"l": 140, "r": 20, "t": 50, "b": 50},
        ),
    }
