"""Parallel coordinates: one line per completed trial through every parameter to its
objective value, coloured by that value (the best in yellow).

Drawn with Plotly line traces on one axis (each parameter a vertical axis at x = 0,
1, ..., its values scaled to [0, 1]) rather than Plotly's ``parcoords``: parcoords is
WebGL only, and where the GPU is emulated (a headless browser, a VM) it takes seconds
to draw even a few lines. The lines are grouped into ``COLOR_BINS`` traces by value,
so 1,000 trials are a handful of SVG paths. Categorical axes name their choices, log
axes their powers of ten; a trial without a value for a (conditional) parameter
passes below that axis, at "n/a".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ladder.dashboard.axes import ParamAxis
from ladder.dashboard.figures import Figure, empty, layout
from ladder.dashboard.sampling import rounded
from ladder.dashboard.trials import Trial, sampled_completed

MAX_LINES = 1000
COLOR_BINS = 8
MISSING_AT = -0.08
# Viridis at COLOR_BINS even steps, worst to best.
VIRIDIS = ("#440154", "#46327e", "#365c8d", "#277f8e", "#1fa187", "#4ac16d", "#a0da39",
           "#fde725")


def _scale(values: list[float | None], axis: ParamAxis | None
           ) -> tuple[list[float], list[tuple[float, str]]]:
    """Values in [0, 1] (MISSING_AT for a missing one) and the ticks that label them."""
    present = [v for v in values if v is not None]
    if axis is not None and axis.categorical:
        low, high = 0.0, max(1.0, len(axis.choices) - 1.0)
    else:
        low, high = (min(present), max(present)) if present else (0.0, 1.0)
    span = (high - low) or 1.0
    scaled = [MISSING_AT if v is None else (v - low) / span for v in values]
    ticks: list[tuple[float, str]] = []
    labelled = axis.tick_labels(low, high) if axis is not None else None
    if labelled is not None:
        ticks = [((v - low) / span, text) for v, text in zip(*labelled, strict=True)
                 if low - 1e-9 <= v <= high + 1e-9]
    if not ticks:
        ticks = [(0.0, f"{low:.4g}"), (1.0, f"{high:.4g}")]
    if len(present) < len(values):
        ticks.append((MISSING_AT, "n/a"))
    return scaled, ticks


def parallel_coordinates(trials: Sequence[Trial], axes: Sequence[ParamAxis], metric: str,
                         maximize: bool, shown: Sequence[Trial] | None = None) -> Figure:
    """``shown``: ``sampled_completed(trials, maximize)`` when the caller has it (at
    most ``MAX_LINES`` of them are drawn, the best tenth among them)."""
    title = "Parallel coordinates"
    lines = sampled_completed(trials if shown is None else shown, maximize, MAX_LINES)
    if not lines or not axes:
        return empty(title, "no completed trial yet")
    names = [a.name for a in axes] + [metric or "value"]
    columns = [_scale([a.encode(t.params.get(a.name)) for t in lines], a) for a in axes]
    values = [t.value for t in lines]
    columns.append(_scale(values, None))  # type: ignore[arg-type]
    low, high = min(values), max(values)  # type: ignore[type-var]
    span = (high - low) or 1.0
    bins: list[list[int]] = [[] for _ in range(COLOR_BINS)]
    for i, v in enumerate(values):
        share = (v - low) / span if maximize else (high - v) / span  # type: ignore[operator]
        bins[min(COLOR_BINS - 1, int(share * COLOR_BINS))].append(i)
    data: list[dict[str, Any]] = []
    xs = list(range(len(names)))
    for b, members in enumerate(bins):
        if not members:
            continue
        x: list[float | None] = []
        y: list[float | None] = []
        ids: list[str | None] = []
        for i in members:
            x += [*xs, None]
            y += [*(col[0][i] for col in columns), None]
            ids += [lines[i].trial_id] * len(xs) + [None]
        data.append({
            "type": "scatter", "mode": "lines", "x": x, "y": rounded(y), "customdata": ids,
            "line": {"color": VIRIDIS[b], "width": 1}, "opacity": 0.55, "showlegend": False,
            "hovertemplate": "%{customdata}<extra></extra>",
        })
    # The colour scale, on two invisible points.
    data.append({
        "type": "scatter", "mode": "markers", "x": [None, None], "y": [None, None],
        "showlegend": False, "hoverinfo": "skip",
        "marker": {"color": [low, high], "colorscale": [[k / (COLOR_BINS - 1), c]
                                                       for k, c in enumerate(VIRIDIS)],
                   "reversescale": not maximize, "showscale": True, "cmin": low,
                   "cmax": high, "colorbar": {"title": {"text": metric}, "thickness": 12}},
    })
    shapes = [{"type": "line", "x0": k, "x1": k, "y0": MISSING_AT, "y1": 1, "xref": "x",
               "yref": "y", "line": {"color": "#555", "width": 1}} for k in xs]
    notes = [{"x": k, "y": 1.06, "text": f"<b>{name}</b>", "showarrow": False, "xref": "x",
              "yref": "y", "yanchor": "bottom"} for k, name in enumerate(names)]
    for k, (_, ticks) in enumerate(columns):
        notes += [{"x": k, "y": at, "text": text, "showarrow": False, "xref": "x",
                   "yref": "y", "xanchor": "right", "xshift": -3, "font": {"size": 10,
                                                                           "color": "#555"}}
                  for at, text in ticks]
    done = sum(t.has_value for t in trials)
    return {
        "data": data,
        "layout": layout(
            f"{title}: {len(lines)} of {done} completed trials",
            xaxis={"visible": False, "range": [-0.5, len(names) - 0.7]},
            yaxis={"visible": False, "range": [MISSING_AT - 0.05, 1.12]},
            shapes=shapes, annotations=notes, height=420, plot_bgcolor="#ffffff",
            margin={"l": 40, "r": 20, "t": 60, "b": 20},
        ),
    }
