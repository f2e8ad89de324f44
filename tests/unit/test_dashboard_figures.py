"""The dashboard's figures from lineage's answers: what each plot shows (best so far,
stop marks with their reasons, rung counts, compute per state and what pruning saved,
parameter axes), that each is a figure plotly accepts, and that a big study is cut
down before it reaches the browser."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import pytest
from ladder.dashboard import curves, figures, parallel, paramplots, rungs
from ladder.dashboard.axes import ParamAxis, param_axes
from ladder.dashboard.importance import Importances
from ladder.dashboard.study import FIGURES, StudyData, study_figures, study_overview
from ladder.dashboard.trials import Trial, best_so_far, from_summaries, sampled_completed
from ladder.dashboard.trialview import TRACE_ATTRIBUTE, trial_view
from ladder.testing.dashboard import synthetic_study, trial_lineage
from ladder.v1 import events_pb2, lineage_pb2


def valid(figure: dict) -> dict:
    """``figure`` if plotly accepts every property of it (a typo raises)."""
    go.Figure(data=figure["data"], layout=figure["layout"])
    return figure


def done(trial_id: str, value: float, ts: int, **params: object) -> Trial:
    return Trial(trial_id, "COMPLETED", value, 27.0, dict(params), terminal_ts_ms=ts)


def study_data(trials: int = 120, **kwargs: object) -> StudyData:
    made = synthetic_study(trials=trials, **kwargs)  # type: ignore[arg-type]
    return StudyData(made.study, made.summary, made.trials, made.study_curves(), made.rungs)


# --- every figure ------------------------------------------------------------------------


def test_every_study_figure_is_valid_plotly_and_named_as_the_page_expects() -> None:
    data = study_data()
    built = study_figures(data)
    assert tuple(built) == FIGURES
    for figure in built.values():
        valid(figure)


def test_a_study_without_trials_gets_figures_that_say_why_they_are_empty() -> None:
    made = synthetic_study(trials=0, running=0)
    data = StudyData(made.study, made.summary, [], lineage_pb2.StudyCurves(),
                     lineage_pb2.StudyRungs())
    built = study_figures(data)
    for name, figure in built.items():
        valid(figure)
        assert figure["data"] == [], name
        assert figure["layout"]["annotations"][0]["text"], name


# --- optimisation history ----------------------------------------------------------------


@pytest.mark.parametrize("maximize, best", [(True, [0.2, 0.5, 0.5, 0.9]),
                                            (False, [0.2, 0.2, 0.1, 0.1])])
def test_history_draws_each_completed_trial_in_completion_order_and_the_best_so_far(
    maximize: bool, best: list[float]
) -> None:
    # Completion order (terminal time), not list order: t3 ended first.
    trials = [done("t1", 0.5, 20), done("t2", 0.1, 30), done("t3", 0.2, 10),
              done("t4", 0.9, 40), Trial("t5", "PRUNED", None, 3.0)]
    figure = valid(figures.history(trials, "acc", maximize))
    points, line = figure["data"]
    assert points["customdata"] == ["t3", "t1", "t2", "t4"]
    assert points["y"] == [0.2, 0.5, 0.1, 0.9]
    # The step line: a point where the best changed, and the last trial.
    steps = dict(zip(line["x"], line["y"], strict=True))
    assert [steps.get(x, steps[max(k for k in steps if k <= x)]) for x in (1, 2, 3, 4)] == best


def test_best_so_far_never_gets_worse() -> None:
    assert best_so_far([3, 1, 2, 0.5], maximize=False) == [3, 1, 1, 0.5]
    assert best_so_far([3, 1, 4, 2], maximize=True) == [3, 3, 4, 4]


def test_history_of_many_trials_is_sampled_but_keeps_every_improvement() -> None:
    count = figures.MAX_HISTORY_POINTS * 2
    trials = [done(f"t{i}", math.sin(i) + i / count, i) for i in range(count)]
    figure = valid(figures.history(trials, "acc", maximize=True))
    points, line = figure["data"]
    assert len(points["x"]) == figures.MAX_HISTORY_POINTS
    assert points["type"] == "scattergl"  # too many markers for SVG
    improved = set(line["x"][:-1])
    assert improved <= set(points["x"])


# --- learning curves and stop marks ------------------------------------------------------


def _curve(trial_id: str, state: str, values: list[float], stop_step: float = 0.0,
           reason: str = "") -> lineage_pb2.TrialCurve:
    points = [lineage_pb2.MetricPoint(step=i + 1, value=v) for i, v in enumerate(values)]
    return lineage_pb2.TrialCurve(trial_id=trial_id, state=state, points=points,
                                  total_points=len(points), stop_step=stop_step,
                                  stop_reason=reason)


def test_curves_draw_one_line_per_state_and_mark_where_each_trial_was_stopped_and_why() -> None:
    answer = lineage_pb2.StudyCurves(
        study_id="s", metric="loss", total_trials=3, total_points=9,
        curves=[_curve("a", "COMPLETED", [0.9, 0.5, 0.3]),
                _curve("b", "PRUNED", [0.9, 0.8, 0.8], 2, "rung 1: rank 3 of 3, cutoff 0.6"),
                _curve("c", "PRUNED", [1.0, 0.9], 1, "rung 0: rank 5 of 6")])
    figure = valid(curves.study_curves(answer))
    traces = {t["name"]: t for t in figure["data"]}
    completed, pruned = traces["completed (1)"], traces["pruned (2)"]
    assert completed["customdata"] == ["a", "a", "a", None]
    # Trials of one state are separated by a gap, not joined.
    assert pruned["x"] == [1, 2, 3, None, 1, 2, None]
    marks = traces["stopped here"]
    assert marks["x"] == [2, 1]
    assert marks["y"] == [0.8, 1.0]  # on the curve, at the step of the decision
    assert marks["customdata"] == [["b", "rung 1: rank 3 of 3, cutoff 0.6"],
                                   ["c", "rung 0: rank 5 of 6"]]
    assert "customdata[1]" in marks["hovertemplate"]  # the reason shows on hover
    assert "3 of 3 trials, 9 points" in figure["layout"]["title"]["text"]


def test_value_at_a_step_is_the_last_point_at_or_before_it() -> None:
    points = [lineage_pb2.MetricPoint(step=s, value=v) for s, v in ((2, 0.5), (4, 0.3))]
    assert curves.value_at(points, 3) == 0.5
    assert curves.value_at(points, 4) == 0.3
    assert curves.value_at(points, 1) == 0.5  # before the first point: the first
    assert curves.value_at([], 1) is None


def test_curve_values_that_are_not_finite_become_gaps() -> None:
    answer = lineage_pb2.StudyCurves(curves=[_curve("a", "FAILED", [0.5, math.nan, math.inf])])
    figure = valid(curves.study_curves(answer))
    assert figure["data"][0]["y"] == [0.5, None, None, None]


def test_a_trials_curve_marks_each_decision_with_its_action_and_reason() -> None:
    lineage = lineage_pb2.TrialLineage(
        trial_id="t", metric="loss",
        metrics=[lineage_pb2.MetricPoint(step=s, value=1 / s, attempt_id="a1")
                 for s in range(1, 10)],
        decisions=[
            events_pb2.Decision(action=events_pb2.PROMOTE, rung=0, resource=1,
                                smoothed_value=1.0, reason="rank 1 of 3"),
            events_pb2.Decision(action=events_pb2.STOP, rung=1, resource=3,
                                smoothed_value=0.4, reason="rank 3 of 3, cutoff 0.35"),
        ],
    )
    figure = valid(curves.trial_curve(lineage))
    by_name = {t["name"]: t for t in figure["data"]}
    assert by_name["a1"]["x"] == list(range(1, 10))
    assert by_name["stop"]["customdata"] == [[1, "rank 3 of 3, cutoff 0.35"]]
    assert by_name["stop"]["y"] == [0.4]
    assert by_name["promote"]["x"] == [1]


def test_a_long_curve_on_the_trial_page_is_decimated_keeping_its_extremes() -> None:
    count = curves.MAX_TRIAL_POINTS * 5
    values = [math.sin(i / 50) for i in range(count)]
    values[1234] = -7.0
    lineage = lineage_pb2.TrialLineage(metrics=[
        lineage_pb2.MetricPoint(step=i, value=v) for i, v in enumerate(values)])
    trace = valid(curves.trial_curve(lineage))["data"][0]
    assert len(trace["x"]) <= curves.MAX_TRIAL_POINTS
    assert -7.0 in trace["y"] and trace["x"][0] == 0 and trace["x"][-1] == count - 1


# --- rungs, compute ----------------------------------------------------------------------


def test_rung_view_shows_population_promoted_stopped_paused_and_the_cutoff_per_rung() -> None:
    answer = lineage_pb2.StudyRungs(rungs=[
        lineage_pb2.RungStats(rung=1, resource=3, population=9, promoted=3, stopped=6,
                              cutoff=0.71),
        lineage_pb2.RungStats(rung=0, resource=1, population=27, promoted=9, stopped=16,
                              paused=2, cutoff=0.52),
    ])
    figure = valid(rungs.rungs_figure(answer, "acc"))
    bars = {t["name"]: t["y"] for t in figure["data"]}
    assert bars["reached"] == [27, 9]  # rung order
    assert bars["promoted"] == [9, 3]
    assert bars["stopped"] == [16, 6]
    assert bars["paused"] == [2, 0]
    assert bars["cutoff"] == [0.52, 0.71]
    assert figure["data"][0]["x"] == ["rung 0 (step 1)", "rung 1 (step 3)"]


def test_compute_per_state_and_what_pruning_saved() -> None:
    trials = [
        Trial("a", "COMPLETED", 0.9, 27.0, train_seconds=54.0),
        Trial("b", "COMPLETED", 0.8, 27.0, train_seconds=54.0),
        Trial("c", "PRUNED", None, 3.0, train_seconds=6.0),
        Trial("d", "PRUNED", None, 9.0, train_seconds=18.0),
        Trial("e", "RUNNING", None, 5.0, train_seconds=10.0),
    ]
    figure = valid(figures.compute_spent(trials, max_resource=27))
    steps = {t["name"]: t["y"][0] for t in figure["data"] if t["xaxis"] == "x"}
    seconds = {t["name"]: t["y"][0] for t in figure["data"] if t["xaxis"] == "x2"}
    assert steps == {"completed": 54.0, "pruned": 12.0, "running": 5.0,
                     "saved by pruning (est.)": 24.0 + 18.0}
    # Seconds saved at the completed trials' 2 s per step.
    assert seconds["saved by pruning (est.)"] == pytest.approx(84.0)
    assert figure["saved"]["share"] == pytest.approx(42 / (71 + 42))
    assert "42 trial-steps" in figure["layout"]["annotations"][0]["text"]


# --- parameters --------------------------------------------------------------------------

AXES = [ParamAxis("lr", log=True), ParamAxis("opt", categorical=True, choices=("adam", "sgd")),
        ParamAxis("depth")]


def test_axes_follow_the_search_space_and_infer_the_rest() -> None:
    made = synthetic_study(trials=5)
    axes = param_axes(made.study.config.space, [{"extra": "x", "lr": 0.1}, {"n": 3}])
    assert [a.name for a in axes] == ["lr", "depth", "optimizer", "dropout", "extra", "n"]
    assert axes[0].log and axes[2].choices == ("adam", "sgd", "rmsprop")
    assert axes[4].categorical and not axes[5].categorical
    assert ParamAxis("lr", log=True).encode(0.001) == pytest.approx(-3)
    assert AXES[1].encode("sgd") == 1.0 and AXES[1].encode("other") is None
    assert AXES[2].encode(None) is None


def test_parallel_coordinates_scale_every_axis_and_colour_by_value() -> None:
    trials = [done(f"t{i}", i / 10, i, lr=10 ** -(1 + i % 4), opt=("adam", "sgd")[i % 2],
                   depth=i % 5) for i in range(10)]
    trials.append(done("nodepth", 0.95, 99, lr=0.01, opt="adam"))  # conditional: no depth
    figure = valid(parallel.parallel_coordinates(trials, AXES, "acc", maximize=True))
    lines = [t for t in figure["data"] if t["mode"] == "lines"]
    ys = [y for t in lines for y in t["y"] if y is not None]
    assert min(ys) == parallel.MISSING_AT and max(ys) == 1.0
    notes = [a["text"] for a in figure["layout"]["annotations"]]
    assert {"<b>lr</b>", "<b>opt</b>", "<b>depth</b>", "<b>acc</b>", "adam", "sgd", "1e-2",
            "n/a"} <= set(notes)
    # The best trial's line is in the last (brightest) colour bin.
    best = next(t for t in lines if "nodepth" in t["customdata"])
    assert best["line"]["color"] == parallel.VIRIDIS[-1]
    assert "11 of 11" in figure["layout"]["title"]["text"]


def test_parallel_coordinates_of_many_trials_keep_the_best() -> None:
    trials = [done(f"t{i}", float(i), i, depth=i) for i in range(5000)]
    figure = valid(parallel.parallel_coordinates(trials, [ParamAxis("depth")], "acc", True))
    drawn = {i for t in figure["data"] if t["mode"] == "lines"
             for i in t.get("customdata", []) if i}
    assert len(drawn) == parallel.MAX_LINES
    assert {f"t{i}" for i in range(4900, 5000)} <= drawn


def test_slices_put_each_parameter_on_its_own_axis_of_the_right_kind() -> None:
    trials = [done(f"t{i}", i / 10, i, lr=10 ** -(1 + i % 4), opt=("adam", "sgd")[i % 2],
                   depth=i % 5) for i in range(10)]
    figure = valid(paramplots.slices(trials, AXES, "acc", maximize=True))
    assert [t["xaxis"] for t in figure["data"]] == ["x", "x2", "x3"]
    layout = figure["layout"]
    assert layout["xaxis"]["type"] == "log"
    assert layout["xaxis2"]["type"] == "category"
    assert layout["xaxis2"]["categoryarray"] == ["adam", "sgd"]
    assert "type" not in layout["xaxis3"]
    assert figure["data"][1]["x"][:2] == ["adam", "sgd"]


def test_scatters_of_many_points_are_sampled_keeping_the_best() -> None:
    trials = [done(f"t{i}", float(i), i) for i in range(20_000)]
    kept = sampled_completed(trials, maximize=False)
    assert len(kept) == 5000
    assert {t.trial_id for t in kept} >= {f"t{i}" for i in range(500)}


def test_importance_figure_lists_parameters_most_important_at_the_top() -> None:
    figure = valid(paramplots.importance_figure(Importances(["lr", "opt"], [0.8, 0.2], 50)))
    assert figure["data"][0]["y"] == ["opt", "lr"]  # plotly draws bars bottom up
    empty = valid(paramplots.importance_figure(Importances([], [], 3, "needs 8 trials")))
    assert empty["layout"]["annotations"][0]["text"] == "needs 8 trials"


# --- the study overview and a trial ------------------------------------------------------


def test_overview_names_the_best_trial_for_the_direction() -> None:
    data = study_data(60)
    overview = study_overview(data)
    best = max((t for t in data.trials if t.value is not None), key=lambda t: t.value)
    assert overview["best"]["trial_id"] == best.trial_id
    assert overview["progress"]["completed"] == data.summary.completed


def test_trial_view_has_params_prediction_attempts_decisions_lineage_and_trace() -> None:
    made = synthetic_study(trials=30)
    pruned = next(t for t in made.trials if t.state == "PRUNED")
    view = trial_view(trial_lineage(made, pruned.trial_id))
    assert view["stop"]["reason"] == pruned.stop_reason
    assert view["stop"]["action"] == "STOP"
    assert set(view["params"]) == {"lr", "depth", "optimizer", "dropout"}
    assert view["predicted"]["mean"] == pytest.approx(pruned.predicted_mean)
    assert view["attempts"][0]["checkpoint_uri"].startswith("s3://")
    assert view["lineage"]["dataset_id"] == "digits@1"
    assert view["trace"]["trace_id"] is None
    assert view["trace"]["attribute"] == TRACE_ATTRIBUTE
    assert view["trace"]["value"] == pruned.trial_id
    valid(view["curve"])


def test_from_summaries_reuses_params_read_before() -> None:
    made = synthetic_study(trials=4)
    known: dict = {}
    first = from_summaries(made.trials, known)
    assert set(known) == {t.trial_id for t in made.trials}
    known[made.trials[0].trial_id] = {"lr": "cached"}
    again = from_summaries(made.trials, known)
    assert again[0].params == {"lr": "cached"} and again[1].params == first[1].params
