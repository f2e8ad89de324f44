"""The rung view: per rung of the early-stop scheduler, how many trials reached it
(population), how many went on (promoted), were stopped or paused there, and the
newest cutoff a trial had to beat (``GetStudyRungs``)."""

from __future__ import annotations

from typing import Any

from ladder.dashboard.figures import Figure, empty, layout
from ladder.v1 import lineage_pb2

# (RungStats field, legend, colour), drawn in this order.
BARS = (
    ("population", "reached", "#7f7f7f"),
    ("promoted", "promoted", "#2ca02c"),
    ("stopped", "stopped", "#d62728"),
    ("paused", "paused", "#9467bd"),
)


def rung_label(rung: lineage_pb2.RungStats) -> str:
    return f"rung {rung.rung} (step {rung.resource:g})"


def rungs_figure(rungs: lineage_pb2.StudyRungs, metric: str = "") -> Figure:
    title = "Rungs"
    ordered = sorted(rungs.rungs, key=lambda r: r.rung)
    if not ordered:
        return empty(title, "no early-stopping decision yet")
    labels = [rung_label(r) for r in ordered]
    data: list[dict[str, Any]] = [
        {"type": "bar", "name": name, "x": labels, "y": [getattr(r, field) for r in ordered],
         "marker": {"color": color}, "hovertemplate": f"%{{x}}: %{{y}} {name}<extra></extra>"}
        for field, name, color in BARS
    ]
    data.append({
        "type": "scatter", "mode": "lines+markers", "name": "cutoff", "x": labels,
        "y": [r.cutoff for r in ordered], "yaxis": "y2",
        "line": {"color": "#000000", "dash": "dot"},
        "hovertemplate": "%{x}: cutoff %{y}<extra></extra>",
    })
    return {
        "data": data,
        "layout": layout(
            title, barmode="group",
            yaxis={"title": {"text": "trials"}},
            yaxis2={"title": {"text": f"cutoff ({metric})" if metric else "cutoff"},
                    "overlaying": "y", "side": "right", "showgrid": False},
            margin={"l": 60, "r": 60, "t": 50, "b": 50},
        ),
        "table": [
            {"rung": r.rung, "resource": r.resource, "population": r.population,
             "promoted": r.promoted, "stopped": r.stopped, "paused": r.paused,
             "cutoff": r.cutoff}
            for r in ordered
        ],
    }
