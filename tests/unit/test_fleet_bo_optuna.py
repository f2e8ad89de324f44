"""The Optuna peer of bench-fleet-bo: its pure parts (the pruner's rungs, the idle-time
accounting, the summaries of fake timings, /proc parsing)."""

from __future__ import annotations

import os

import pytest

from bench.fleet_bo_optuna import (
    CLOCK_TICKS,
    WorkerStats,
    cpu_seconds,
    overlap,
    process_summary,
    rungs,
    stat_cpu,
    summarize,
    tree_cpu_seconds,
)


def test_rungs_are_ladders_asha_rungs_below_the_last_step() -> None:
    assert rungs(4, 3, 108) == [4, 12, 36]
    assert rungs(1, 2, 9) == [1, 2, 4, 8]
    assert rungs(5, 3, 5) == []


@pytest.mark.parametrize(
    ("call", "window", "expected"),
    [
        ((1.0, 3.0), (0.0, 10.0), 2.0),  # inside
        ((9.0, 12.0), (0.0, 10.0), 1.0),  # runs past the deadline
        ((-2.0, 1.0), (0.0, 10.0), 1.0),  # began before the worker's start
        ((11.0, 12.0), (0.0, 10.0), 0.0),  # after the deadline
    ],
)
def test_overlap_clips_a_call_to_the_run(
    call: tuple[float, float], window: tuple[float, float], expected: float
) -> None:
    assert overlap(*call, *window) == pytest.approx(expected)


def _stats(**kwargs: object) -> WorkerStats:
    stats = WorkerStats()
    for key, value in kwargs.items():
        setattr(stats, key, value)
    return stats


def test_process_summary_counts_an_unanswered_call_as_idle_and_unfinished() -> None:
    deadline = 100.0
    answered = _stats(began=40.0, asks=3, pruned=2, idle_s=6.0, ask_ms=[5.0, 7.0], errors={"a": 1})
    stuck = _stats(began=50.0, asks=1, idle_s=1.0, in_call=("ask", 90.0), errors={"a": 2})
    waiting = _stats()  # still in its ramp: no time in the run
    out = process_summary([answered, stuck, waiting], now=120.0, deadline=deadline)
    assert out["workers"] == 3 and out["workers_started"] == 2
    assert out["worker_s"] == pytest.approx(60.0 + 50.0)
    # The stuck call waited 10 s before the deadline (30 s in all).
    assert out["idle_s"] == pytest.approx(6.0 + 1.0 + 10.0)
    assert out["unfinished"] == 1
    assert out["unanswered"] == {"ask": 1}
    assert out["unanswered_age_s"] == [30.0]
    assert out["errors"] == {"a": 3}
    assert out["ask_ms"] == [5.0, 7.0]


def test_worker_stats_call_adds_only_the_time_before_the_deadline() -> None:
    stats = WorkerStats()
    stats.began = 0.0  # long before now on the monotonic clock
    with stats.call("report", deadline=float("inf")):
        assert stats.in_call is not None and stats.in_call[0] == "report"
    assert stats.in_call is None
    assert 0.0 <= stats.idle_s < 1.0
    with stats.call("tell", deadline=0.0):  # the run was over before the call
        pass
    assert stats.idle_s < 1.0
    stats.error("ask", RuntimeError("x"))
    stats.error("ask", RuntimeError("y"))
    assert stats.errors == {"ask:RuntimeError": 2}


def _process(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "workers": 50,
        "workers_started": 50,
        "asks": 40,
        "asks_after_warmup": 20,
        "model_served": 25,
        "model_served_after_warmup": 18,
        "model_served_finished": 12,
        "pruned": 24,
        "completed": 6,
        "unfinished": 10,
        "errors": {"ask:RpcError:UNAVAILABLE": 1},
        "ask_ms": [float(v) for v in range(1, 101)],
        "decision_ms": [10.0, 20.0],
        "report_ms": [1.0, 2.0, 3.0],
        "tell_ms": [4.0],
        "idle_s": 30.0,
        "worker_s": 600.0,
        "unanswered": {},
        "unanswered_age_s": [],
    }
    return {**base, **overrides}


def test_summarize_merges_the_processes_into_fleet_bo_names() -> None:
    results = [_process(), _process(pruned=26, completed=4, unanswered={"report": 2},
                                    unanswered_age_s=[30.0, 90.5])]
    out = summarize(results, duration=20.0, rate=1.0, workers=100)
    assert out["trials"] == {"started": 80, "pruned": 50, "completed": 10, "unfinished": 20}
    assert out["trials_finished_per_s"] == 3.0  # 60 finished in 20 s
    assert out["model_served_trials_per_s"] == 1.2  # 24 of them model-served
    assert out["pruned_fraction"] == pytest.approx(50 / 60, abs=1e-4)
    assert out["model_served_fraction"] == 0.625
    assert out["model_served_fraction_after_warmup"] == 0.9
    assert out["suggestions"]["served_by"] == {"model": 50, "no-model": 30}
    assert out["worker_idle_fraction"] == 0.05
    assert out["suggest_latency_ms"]["n"] == 200
    assert out["suggest_latency_ms"]["p50"] == 51.0
    assert out["suggest_latency_ms"]["p99"] == 100.0
    assert out["report_to_decision_ms"]["n"] == 4
    assert out["rpc_errors"] == {"ask:RpcError:UNAVAILABLE": 2}
    assert out["unanswered_at_end"] == {"report": 2}
    assert out["unanswered_age_ms"]["n"] == 2
    assert out["unanswered_age_ms"]["max"] == 90500.0


def test_summarize_of_a_run_that_finished_nothing_has_no_fractions() -> None:
    empty = _process(
        asks=0,
        asks_after_warmup=0,
        model_served=0,
        model_served_after_warmup=0,
        model_served_finished=0,
        pruned=0,
        completed=0,
        ask_ms=[],
        decision_ms=[],
        worker_s=0.0,
    )
    out = summarize([empty], duration=60.0, rate=1.0, workers=50)
    assert out["trials_finished_per_s"] == 0.0
    assert out["pruned_fraction"] is None
    assert out["model_served_fraction"] is None
    assert out["worker_idle_fraction"] is None
    assert out["suggest_latency_ms"] == {"n": 0}


def test_stat_cpu_reads_a_proc_stat_line_whose_name_has_parentheses() -> None:
    ticks = CLOCK_TICKS
    line = (
        f"4242 (post gres) (x)) S 17 4242 4242 0 -1 4194560 100 0 0 0 "
        f"{3 * ticks} {ticks} {2 * ticks} {ticks} 20 0 1 0 100 1000 200"
    )
    own, children, parent = stat_cpu(line)
    assert own == pytest.approx(4.0)
    assert children == pytest.approx(3.0)
    assert parent == 17


def test_cpu_of_this_process_and_of_a_gone_one() -> None:
    own = cpu_seconds(os.getpid())
    assert own > 0
    assert tree_cpu_seconds(os.getpid()) >= own
    assert cpu_seconds(2**22 + 12345) == 0.0  # above the kernel's largest pid
    assert tree_cpu_seconds(2**22 + 12345) == 0.0
