"""Plotly figures as plain dicts (``{"data": [...], "layout": {...}}``), built in Python
and drawn by plotly.js in the browser: the optimisation history and the compute spent
per state. Every builder is pure: messages or trials in, a figure out.

Big scatters use ``scattergl`` (WebGL): SVG markers slow a browser down past a few
thousand points. Small ones stay SVG (``scatter_type``): each WebGL plot costs a
context, slow to create where the GPU is emulated (a headless browser, a VM).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ladder.dashboard.sampling import even_sample, rounded
from ladder.dashboard.trials import (
    COMPLETED,
    OTHER_COLOR,
    PRUNED,
    STATE_COLORS,
    Trial,
    best_so_far,
    completion_order,
)

Figure = dict[str, Any]
# Completed trials drawn in the history; beyond, an even sample plus every trial that
# improved the best so far.
MAX_HISTORY_POINTS = 20_000
# Points a plot draws as SVG; more go to WebGL.
SVG_POINTS = 2000


def scatter_type(points: int) -> str:
    """``scattergl`` past ``SVG_POINTS`` points, else ``scatter``."""
    return "scattergl" if points > SVG_POINTS else "scatter"


def layout(title: str, **extra: Any) -> dict[str, Any]:
    """The layout every figure shares: its title, compact margins, a legend on top."""
    return {
        "title": {"text": title, "x": 0, "xanchor": "left", "font": {"size": 15}},
        "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
        "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1,
                   "xanchor": "right"},
        "hovermode": "closest",
        "plot_bgcolor": "#fafafa",
        **extra,
    }


def empty(title: str, message: str) -> Figure:
    """A figure with nothing to plot yet, saying why."""
    return {
        "data": [],
        "layout": layout(
            title,
            xaxis={"visible": False},
            yaxis={"visible": False},
            annotations=[{"text": message, "showarrow": False, "xref": "paper",
                          "yref": "paper", "x": 0.5, "y": 0.5, "font": {"size": 13}}],
        ),
    }


def state_color(state: str) -> str:
    return STATE_COLORS.get(state, OTHER_COLOR)


def state_order(present: set[str]) -> list[str]:
    """The known states in plot order, then any other, sorted."""
    return [s for s in STATE_COLORS if s in present] + sorted(present - set(STATE_COLORS))


def history(trials: Sequence[Trial], metric: str, maximize: bool) -> Figure:
    """Every completed trial's value in completion order, and the best so far."""
    title = "Optimisation history"
    done = completion_order(trials)
    if not done:
        return empty(title, "no completed trial yet")
    values = [t.value for t in done]
    best = best_so_far(values, maximize)  # type: ignore[arg-type]
    improved = [i for i in range(len(best)) if i == 0 or best[i] != best[i - 1]]
    shown = even_sample(len(done), MAX_HISTORY_POINTS, keep=improved)
    xs = [i + 1 for i in shown]
    return {
        "data": [
            {
                "type": scatter_type(len(shown)), "mode": "markers", "name": "completed trial",
                "x": xs, "y": rounded([values[i] for i in shown]),
                "customdata": [done[i].trial_id for i in shown],
                "marker": {"color": state_color(COMPLETED), "size": 5, "opacity": 0.6},
                "hovertemplate": "%{customdata}<br>#%{x}: %{y}<extra></extra>",
            },
            {
                "type": "scatter", "mode": "lines", "name": "best so far",
                "x": [i + 1 for i in improved] + [len(done)],
                "y": [best[i] for i in improved] + [best[-1]],
                "line": {"color": "#d62728", "width": 2, "shape": "hv"},
                "hovertemplate": "best so far: %{y}<extra></extra>",
            },
        ],
        "layout": layout(
            title,
            xaxis={"title": {"text": "completed trial #"}},
            yaxis={"title": {"text": f"{metric} ({'max' if maximize else 'min'})"}},
        ),
    }


def compute_spent(trials: Sequence[Trial], max_resource: float) -> Figure:
    """Trial-steps and training seconds per state, and what pruning saved: the steps
    a pruned trial did not run up to ``max_resource`` (the scheduler's full budget;
    0: the furthest any trial got), in seconds at the completed trials' mean
    seconds per step."""
    title = "Compute spent per state"
    if not trials:
        return empty(title, "no trial yet")
    steps: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for t in trials:  # one pass: 20,000 trials
        steps[t.state] = steps.get(t.state, 0.0) + t.last_step
        seconds[t.state] = seconds.get(t.state, 0.0) + t.train_seconds
    states = state_order(set(steps))
    full = max_resource or max((t.last_step for t in trials), default=0.0)
    saved_steps = sum(max(0.0, full - t.last_step) for t in trials if t.state == PRUNED)
    done_steps = sum(t.last_step for t in trials if t.state == COMPLETED)
    per_step = seconds.get(COMPLETED, 0.0) / done_steps if done_steps > 0 else 0.0
    saved_seconds = saved_steps * per_step
    spent = sum(steps.values())
    share = saved_steps / (spent + saved_steps) if spent + saved_steps > 0 else 0.0
    data: list[dict[str, Any]] = []
    for s in states:
        color = state_color(s)
        data.append({"type": "bar", "name": s.lower(), "legendgroup": s, "x": ["trial-steps"],
                     "y": [steps[s]], "marker": {"color": color}, "xaxis": "x",
                     "yaxis": "y", "hovertemplate": f"{s.lower()}: %{{y}} steps<extra></extra>"})
        data.append({"type": "bar", "name": s.lower(), "legendgroup": s, "showlegend": False,
                     "x": ["train seconds"], "y": [seconds[s]], "marker": {"color": color},
                     "xaxis": "x2", "yaxis": "y2",
                     "hovertemplate": f"{s.lower()}: %{{y:.1f}} s<extra></extra>"})
    saved_style = {"color": "rgba(255,127,14,0.15)", "line": {"color": "#ff7f0e", "width": 1},
                   "pattern": {"shape": "/"}}
    data.append({"type": "bar", "name": "saved by pruning (est.)", "legendgroup": "saved",
                 "x": ["trial-steps"], "y": [saved_steps], "marker": saved_style,
                 "xaxis": "x", "yaxis": "y",
                 "hovertemplate": "saved: %{y} steps<extra></extra>"})
    data.append({"type": "bar", "name": "saved by pruning (est.)", "legendgroup": "saved",
                 "showlegend": False, "x": ["train seconds"], "y": [saved_seconds],
                 "marker": saved_style, "xaxis": "x2", "yaxis": "y2",
                 "hovertemplate": "saved: %{y:.1f} s<extra></extra>"})
    note = (f"pruning saved about {saved_steps:,.0f} trial-steps ({share:.0%} of running "
            f"every trial to step {full:g})")
    return {
        "data": data,
        "layout": layout(
            title, barmode="stack",
            xaxis={"domain": [0, 0.45]}, xaxis2={"domain": [0.55, 1], "anchor": "y2"},
            yaxis={"title": {"text": "trial-steps"}},
            yaxis2={"title": {"text": "seconds"}, "anchor": "x2"},
            annotations=[{"text": note, "showarrow": False, "xref": "paper", "yref": "paper",
                          "x": 0, "y": -0.18, "xanchor": "left", "font": {"size": 12}}],
        ),
        "saved": {"steps": saved_steps, "seconds": saved_seconds, "share": share,
                  "full_steps": full},
    }
