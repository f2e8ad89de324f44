"""The trial table (its CSV equals ListTrials, its JSON is compact), the studies page's
rows and progress, the parameter importances, and the helpers that cut what reaches
the browser."""

from __future__ import annotations

import csv
import io
import math

import pytest
from ladder.dashboard import jsonout, listing, table
from ladder.dashboard.axes import ParamAxis
from ladder.dashboard.importance import MAX_TRIALS, feature_matrix, importances
from ladder.dashboard.sampling import decimate, even_sample, rounded
from ladder.dashboard.trials import Trial, from_summaries
from ladder.params import params_to_dict
from ladder.testing.dashboard import synthetic_study
from ladder.v1 import lineage_pb2, study_pb2

# --- the table ---------------------------------------------------------------------------


def test_csv_has_one_row_per_listtrials_summary_with_every_digit() -> None:
    made = synthetic_study(trials=40)
    made.trials[0].final_value = 0.1 + 0.2  # 0.30000000000000004: every digit kept
    made.trials[0].has_final_value = True
    made.trials[0].state = "COMPLETED"
    text = table.table_csv(from_summaries(made.trials), ["lr", "depth", "optimizer", "dropout"])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["trial_id"] for r in rows] == [t.trial_id for t in made.trials]
    for row, summary in zip(rows, made.trials, strict=True):
        assert row["state"] == summary.state
        assert row["value"] == (repr(summary.final_value) if summary.has_final_value else "")
        assert float(row["last_step"]) == summary.last_step
        assert row["stop_reason"] == summary.stop_reason
        params = params_to_dict(summary.params)
        assert float(row["params.lr"]) == params["lr"]
        assert row["params.optimizer"] == params["optimizer"]
        assert int(row["params.depth"]) == params["depth"]
    assert rows[0]["value"] == "0.30000000000000004"
    assert list(rows[0])[: len(table.COLUMN_NAMES)] == list(table.COLUMN_NAMES)


def test_csv_leaves_a_missing_param_empty_and_keeps_space_order() -> None:
    trials = [Trial("a", "COMPLETED", 1.0, 3.0, {"z": 1, "lr": 0.5}),
              Trial("b", "PRUNED", None, 1.0, {"lr": 0.25, "cond": "x"})]
    rows = list(csv.reader(io.StringIO(table.table_csv(trials, ["lr"]))))
    header = rows[0]
    assert header[-3:] == ["params.lr", "params.cond", "params.z"]
    assert rows[2][header.index("params.z")] == ""
    assert rows[2][header.index("value")] == ""


def test_table_json_is_columns_of_rounded_values() -> None:
    trials = [Trial("a", "COMPLETED", 0.123456789, 27.0, {"lr": 0.000123456789, "opt": "adam"}),
              Trial("b", "PRUNED", None, 3.0, {"lr": 0.5})]
    data = table.table_json(trials, ["lr", "opt"])
    columns = dict(zip(data["columns"], data["data"], strict=True))
    assert data["count"] == 2
    assert columns["trial_id"] == ["a", "b"]
    assert columns["value"] == [0.123457, None]
    assert columns["params.lr"] == [0.000123457, 0.5]
    assert columns["params.opt"] == ["adam", None]
    assert all(len(values) == 2 for values in data["data"])


def test_big_columns_of_few_strings_or_a_shared_prefix_are_packed() -> None:
    states = ["PRUNED", "COMPLETED", None, "PRUNED"] * 50
    assert table.packed(states) == {"values": ["PRUNED", "COMPLETED"],
                                    "codes": [0, 1, None, 0] * 50}
    ids = [f"study-abc-t{i}" for i in range(200)]
    assert table.packed(ids) == {"prefix": "study-abc-t", "rest": [str(i) for i in range(200)]}
    reasons = [f"rung {i}: rank {i} of {i + 1}" for i in range(200)]
    assert table.packed(reasons) == reasons  # distinct, no long prefix: as they are
    assert table.packed([0.5] * 200) == [0.5] * 200  # numbers are never packed
    assert table.packed(["a", "b"]) == ["a", "b"]  # nor short columns


def test_json_for_the_browser_has_no_nan() -> None:
    assert jsonout.dumps({"a": [1.5, math.nan], "b": (math.inf,)}) == '{"a":[1.5,null],"b":[null]}'


# --- sampling ----------------------------------------------------------------------------


def test_even_sample_keeps_what_it_must_and_spreads_the_rest() -> None:
    picked = even_sample(1000, 100, keep=[999, 998, 5])
    assert len(picked) == 100 == len(set(picked))
    assert {5, 998, 999} <= set(picked) and picked == sorted(picked)
    assert max(b - a for a, b in zip(picked, picked[1:], strict=False)) <= 20
    assert even_sample(5, 10) == [0, 1, 2, 3, 4]
    assert even_sample(10, 0) == []


def test_decimate_keeps_ends_and_extremes() -> None:
    ys = [math.sin(i / 10) for i in range(10_000)]
    ys[4321] = 5.0
    ys[777] = -5.0
    kept = decimate(list(range(10_000)), ys, 200)
    assert len(kept) <= 200 and kept[0] == 0 and kept[-1] == 9999
    assert {4321, 777} <= set(kept)


def test_rounded_keeps_six_significant_digits_and_drops_non_finite() -> None:
    assert rounded([0.806464241055266, 123456.789, 3.14159265e-5, 0.0, None, math.nan]) == [
        0.806464, 123457.0, 3.14159e-05, 0.0, None, None]


# --- studies page and progress -----------------------------------------------------------


def test_study_row_has_state_algorithm_scheduler_progress_best_and_age() -> None:
    made = synthetic_study("s1", trials=50)
    made.study.config.labels["team"] = "vision"
    row = listing.study_row(lineage_pb2.StudyListing(study=made.study, summary=made.summary),
                            now_ms=made.study.created_unix_ms + 185_000)
    assert row["state"] == "active" and row["algorithm"] == "tpe"
    assert row["scheduler"] == "asha" and row["direction"] == "max"
    assert row["age"] == "3m05s"
    assert row["labels"] == {"team": "vision"}
    assert row["best_value"] == made.summary.best_value
    progress = row["progress"]
    assert progress["max_trials"] == 50
    for count in ("running", "pruned", "completed", "failed"):
        assert progress[count] == getattr(made.summary, count)
        assert progress["percent"][count] == pytest.approx(100 * progress[count] / 50)


def test_progress_without_a_budget_counts_against_the_trials_handed_out() -> None:
    study = study_pb2.Study(study_id="s", trials_suggested=8,
                            config=study_pb2.StudyConfig(max_trials=0))
    found = listing.progress(study, lineage_pb2.StudySummary(completed=2, running=2))
    assert found["whole"] == 8
    assert found["percent"]["completed"] == 25.0
    assert found["best_value"] is None


def test_progress_counts_the_trials_lineage_has_seen_when_the_study_record_lags() -> None:
    """Lineage's study record says what was handed out as of its last StudyEvent (0
    while a study runs, until it completes): the trials lineage has seen are handed out
    too, and the page must not show fewer."""
    study = study_pb2.Study(study_id="s", trials_suggested=0,
                            config=study_pb2.StudyConfig(max_trials=12))
    summary = lineage_pb2.StudySummary(suggested=1, running=3, pruned=2, completed=1)
    assert listing.progress(study, summary)["suggested"] == 7
    study.trials_suggested = 12
    assert listing.progress(study, summary)["suggested"] == 12


# --- importances -------------------------------------------------------------------------


def _trials(count: int, value: object) -> list[Trial]:
    import random

    rng = random.Random(1)
    out = []
    for i in range(count):
        params = {"a": rng.random(), "b": rng.random(), "opt": rng.choice(["x", "y", "z"])}
        out.append(Trial(f"t{i}", "COMPLETED", value(params, rng), 10.0, params))  # type: ignore[operator]
    return out


AXES = [ParamAxis("a"), ParamAxis("b"), ParamAxis("opt", categorical=True,
                                                  choices=("x", "y", "z"))]


def test_the_parameter_that_drives_the_value_ranks_first() -> None:
    trials = _trials(200, lambda p, rng: 3 * p["b"] + 0.05 * rng.random())
    found = importances(trials, AXES, maximize=True)
    assert found.names[0] == "b" and found.values[0] > 0.8
    assert sum(found.values) == pytest.approx(1.0)


def test_a_categorical_parameter_can_be_the_important_one() -> None:
    trials = _trials(200, lambda p, rng: (p["opt"] == "y") + 0.05 * rng.random())
    assert importances(trials, AXES, maximize=False).names[0] == "opt"


def test_importances_need_enough_trials_with_differing_values() -> None:
    few = importances(_trials(5, lambda p, rng: p["a"]), AXES, True)
    assert few.names == [] and "needs 8" in few.note
    flat = importances(_trials(50, lambda p, rng: 1.0), AXES, True)
    assert flat.names == [] and "same value" in flat.note


def test_importances_of_a_big_study_fit_on_a_sample() -> None:
    trials = _trials(MAX_TRIALS * 3, lambda p, rng: p["a"])
    found = importances(trials, AXES, True)
    assert found.trials_used == MAX_TRIALS and found.names[0] == "a"


def test_a_missing_conditional_value_is_below_every_real_one() -> None:
    trials = [Trial("a", "COMPLETED", 1.0, 1.0, {"a": 0.2}),
              Trial("b", "COMPLETED", 2.0, 1.0, {"a": 0.7, "opt": "z"})]
    matrix = feature_matrix(trials, [ParamAxis("a"), AXES[2], ParamAxis("never")])
    assert matrix.tolist() == [[0.2, 1.0, -1.0], [0.7, 2.0, -1.0]]
