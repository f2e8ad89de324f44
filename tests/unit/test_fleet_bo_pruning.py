"""bench-fleet-bo's pruned fraction on the same trials as its replay (bench/fleet_bo_pruning)."""

from __future__ import annotations

import pytest

from bench.fleet_bo_pruning import COMPLETED, PRUNED, LiveTrial, cohort_cutoff, same_trials


def test_the_cutoff_leaves_a_whole_trial_before_the_end_of_the_run() -> None:
    # 180 s from t=1000, 108 steps at 1/s, 5 s spare: started by t=1067.
    assert cohort_cutoff(1000.0, 180.0, 108, 1.0, 5.0) == pytest.approx(1067.0)
    # At 2 reports/s a whole trial takes 54 s.
    assert cohort_cutoff(1000.0, 180.0, 108, 2.0, 5.0) == pytest.approx(1121.0)


def test_only_trials_started_by_the_cutoff_count_and_the_late_ones_bias_nothing() -> None:
    live = {
        "a": LiveTrial(10.0, PRUNED),
        "b": LiveTrial(20.0, COMPLETED),
        "c": LiveTrial(30.0, PRUNED),
        "d": LiveTrial(40.0, COMPLETED),
        # After the cutoff: pruned ones ended in the run, completing ones were cut off,
        # which is what biases the pruned share of the ended trials.
        "e": LiveTrial(60.0, PRUNED),
        "f": LiveTrial(61.0, PRUNED),
        "g": LiveTrial(62.0, None),
    }
    replay = {k: k in {"a", "c", "e", "f"} for k in live}
    got = same_trials(live, replay, cutoff_unix=50.0)
    assert got["trials"] == 4
    assert got["unfinished"] == 0
    assert got["live_pruned_fraction"] == 0.5
    assert got["replay_pruned_fraction"] == 0.5
    assert got["pruned_live_only"] == got["pruned_replay_only"] == 0


def test_outcomes_that_differ_are_counted_each_way_and_unended_trials_apart() -> None:
    live = {
        "a": LiveTrial(1.0, PRUNED),      # the replay completed it
        "b": LiveTrial(2.0, COMPLETED),   # the replay pruned it (a STOP too late live)
        "c": LiveTrial(3.0, COMPLETED),   # the replay pruned it too
        "d": LiveTrial(4.0, PRUNED),
        "e": LiveTrial(5.0, None),        # failed or still running: not compared
        "f": LiveTrial(6.0, PRUNED),      # not in the replay (no TRIAL_SUGGESTED read)
    }
    replay = {"a": False, "b": True, "c": True, "d": True, "e": True}
    got = same_trials(live, replay, cutoff_unix=10.0)
    assert got["trials"] == 4
    assert got["unfinished"] == 1
    assert got["live_pruned_fraction"] == 0.5
    assert got["replay_pruned_fraction"] == 0.75
    assert got["pruned_live_only"] == 1
    assert got["pruned_replay_only"] == 2


def test_an_empty_cohort_has_no_fraction() -> None:
    got = same_trials({"a": LiveTrial(99.0, PRUNED)}, {"a": True}, cutoff_unix=10.0)
    assert got["trials"] == 0
    assert got["live_pruned_fraction"] is None
    assert got["replay_pruned_fraction"] is None
