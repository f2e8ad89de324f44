"""Everything the study page draws, from the four answers lineage gives about a study;
and the trial page's data from one trial's lineage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ladder.cli_format import plain
from ladder.dashboard import curves, figures, parallel, paramplots, rungs, table
from ladder.dashboard.axes import ParamAxis, param_axes
from ladder.dashboard.importance import Importances, importances
from ladder.dashboard.listing import maximizes, progress
from ladder.dashboard.trials import Trial, best_trial, from_summaries, sampled_completed
from ladder.params import PlainValue
from ladder.v1 import lineage_pb2, study_pb2

# The figures of the study page, in page order (the element ids the page gives them:
# ``plot-<name>``). The page's grid has two columns and curves, parallel and slices take
# a whole row, so the half-width ones come in pairs: no cell is left empty.
FIGURES = ("history", "rungs", "curves", "compute", "importance", "parallel", "slices")


@dataclass(frozen=True)
class StudyData:
    """A study's answers from lineage, its trials as ``Trial`` values. ``known_params``:
    params by trial id from an earlier read of the study (``from_summaries``)."""

    study: study_pb2.Study
    summary: lineage_pb2.StudySummary
    summaries: list[lineage_pb2.TrialSummary]
    curves: lineage_pb2.StudyCurves
    rungs: lineage_pb2.StudyRungs
    known_params: dict[str, dict[str, PlainValue]] | None = None
    trials: list[Trial] = field(init=False)
    axes: list[ParamAxis] = field(init=False)

    def __post_init__(self) -> None:
        trials = from_summaries(self.summaries, self.known_params)
        space = self.study.config.space if self.study.config.HasField("space") else None
        object.__setattr__(self, "trials", trials)
        object.__setattr__(self, "axes", param_axes(space, [t.params for t in trials]))

    @property
    def maximize(self) -> bool:
        return maximizes(self.study)

    @property
    def metric(self) -> str:
        return self.study.config.metric


def study_figures(data: StudyData, found: Importances | None = None) -> dict[str, Any]:
    """Every figure of the study page by name (``FIGURES``); ``found``: importances
    computed earlier (they cost most: the caller may keep them a while)."""
    axes = data.axes
    metric, maximize = data.metric, data.maximize
    found = found if found is not None else importances(data.trials, axes, maximize)
    shown = sampled_completed(data.trials, maximize)
    return {
        "history": figures.history(data.trials, metric, maximize),
        "rungs": rungs.rungs_figure(data.rungs, metric),
        "curves": curves.study_curves(data.curves),
        "compute": figures.compute_spent(data.trials,
                                         data.study.config.scheduler.max_resource),
        "importance": paramplots.importance_figure(found),
        "parallel": parallel.parallel_coordinates(data.trials, axes, metric, maximize, shown),
        "slices": paramplots.slices(data.trials, axes, metric, maximize, shown),
    }


def study_overview(data: StudyData) -> dict[str, Any]:
    """The study's config, progress and best trial as plain data."""
    best = best_trial(data.trials, data.maximize)
    return {
        "study": plain(data.study),
        "progress": progress(data.study, data.summary),
        "best": None if best is None else {"trial_id": best.trial_id, "value": best.value,
                                           "params": best.params},
    }


def recommendation(data: StudyData) -> dict[str, Any]:
    """The trial ``ladder best --noisy`` recommends (``ladder.samplers.recommend``: the
    best GP posterior mean at a completed trial, which on a noisy metric does not reward
    a lucky draw as the best observed value does), beside the best observed one.
    ``recommended`` is None while no completed trial's params fit the study's space."""
    from ladder.samplers.base import Observation
    from ladder.samplers.recommend import best_by_posterior_mean
    from ladder.space import Space

    best = best_trial(data.trials, data.maximize)
    found = {"best_trial_id": None if best is None else best.trial_id, "recommended": None}
    if best is None or not data.study.config.HasField("space"):
        return found
    completed = [Observation(t.trial_id, t.params, t.value) for t in data.trials if t.has_value]
    try:
        pick = best_by_posterior_mean(
            Space.from_proto(data.study.config.space), completed, data.maximize)
    except ValueError:  # none of them is a point of the study's space
        return found
    return {**found, "recommended": {"trial_id": pick.trial_id, "value": pick.value,
                                     "params": pick.params}}


def trial_table(data: StudyData) -> dict[str, Any]:
    return table.table_json(data.trials, [a.name for a in data.axes])


def trial_csv(data: StudyData) -> str:
    return table.table_csv(data.trials, [a.name for a in data.axes])
