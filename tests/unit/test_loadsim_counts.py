"""The load simulator's end-to-end counts: pure parts, no broker."""

from ladder.v1 import events_pb2

from workers.loadsim_observe import (
    SeenDecision,
    counts_check,
    expected_crossings,
    merge_acked_steps,
    merge_obeyed,
    stop_obey_latencies,
    stop_timeliness,
)


def test_a_trial_run_in_two_processes_keeps_its_larger_acked_step() -> None:
    merged = merge_acked_steps([{"t1": 13, "t2": 4}, {"t1": 5, "t3": 2}])
    assert merged == {"t1": 13, "t2": 4, "t3": 2}
    # The order of the processes does not matter.
    assert merge_acked_steps([{"t1": 5, "t3": 2}, {"t1": 13, "t2": 4}]) == merged


def test_expected_crossings_are_the_rungs_the_last_acked_step_reached() -> None:
    assert expected_crossings({"a": 12, "b": 3}, [4.0, 12.0, 36.0]) == {("a", 0), ("a", 1)}


def test_counts_check_names_missing_duplicate_and_unexpected_decisions() -> None:
    def seen(trial: str, rung: int, action: int = 1) -> SeenDecision:
        return SeenDecision(trial, rung, action, 0, 0, 0.0)

    expected = {("a", 0), ("a", 1), ("b", 0)}
    result = counts_check(expected, [seen("a", 0), seen("a", 0, 2), seen("b", 0), seen("c", 0)])
    assert result["missing"] == 1 and result["missing_sample"] == [("a", 1)]
    assert result["duplicates"] == 1 and result["conflicting_duplicates"] == 1
    assert result["identical_redeliveries"] == 0
    assert result["unexpected"] == 1
    assert not result["ok"]
    assert counts_check(expected, [seen("a", 0), seen("a", 1), seen("b", 0)])["ok"]


def test_a_decision_delivered_twice_with_the_same_verdict_is_a_redelivery() -> None:
    def seen(trial: str, rung: int, action: int) -> SeenDecision:
        return SeenDecision(trial, rung, action, 0, 0, 0.0)

    result = counts_check({("a", 0)}, [seen("a", 0, 2), seen("a", 0, 2)])
    assert result["duplicates"] == 1 and result["identical_redeliveries"] == 1
    assert result["conflicting_duplicates"] == 0 and result["missing"] == 0
    assert not result["ok"]  # the strict check still counts it


def test_stop_timeliness_counts_stops_too_late_and_steps_past_the_rung() -> None:
    def decision(trial: str, rung: int, action: int) -> SeenDecision:
        return SeenDecision(trial, rung, action, 1, 2, 3.0)

    acked = {"early": 5, "late": 108, "kept": 108, "twice": 40}
    decisions = [
        decision("early", 0, events_pb2.STOP),  # rung 4, trial stopped at step 5
        decision("late", 2, events_pb2.STOP),  # rung 36, came after all 108 steps
        decision("kept", 0, events_pb2.CONTINUE),
        decision("twice", 1, events_pb2.STOP),  # rung 12; a later STOP at rung 36 too
        decision("twice", 2, events_pb2.STOP),
    ]
    result = stop_timeliness(acked, decisions, [4.0, 12.0, 36.0], 108)
    assert result["trials_told_stop"] == 3
    assert result["stop_after_all_steps"] == 1
    assert result["steps_past_the_stop_rung"]["max"] == 72  # 108 - 36
    assert result["steps_past_the_stop_rung"]["n"] == 3


def test_a_stop_is_obeyed_counting_from_the_report_that_earned_the_first_one() -> None:
    # "t" is told STOP at rung 0 (report at 1,000 ms), trains on and is told STOP again
    # at rung 2 (report at 4,000 ms): evaluate keeps the later one, but the worker was
    # 4 s late, not 1 s. "u" obeyed in two processes (re-issued): the first counts.
    decisions = [
        SeenDecision("t", 0, events_pb2.STOP, 1000, 1100, 1200.0),
        SeenDecision("t", 1, events_pb2.CONTINUE, 2000, 2100, 2200.0),
        SeenDecision("t", 2, events_pb2.STOP, 4000, 4100, 4200.0),
        SeenDecision("u", 1, events_pb2.STOP, 3000, 3100, 3200.0),
        SeenDecision("v", 0, events_pb2.CONTINUE, 3000, 3100, 3200.0),
    ]
    obeyed = merge_obeyed([{"t": 5000.0, "u": 3900.0}, {"u": 3500.0, "w": 9000.0}])
    assert obeyed == {"t": 5000.0, "u": 3500.0, "w": 9000.0}
    # "w" has no STOP on the topic (an operator's, or seen before the observer): left out.
    assert sorted(stop_obey_latencies(obeyed, decisions)) == [500.0, 4000.0]
