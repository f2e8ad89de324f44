"""bench-fleet-bo's timeline: decision latency, backlog and CPU per stretch of a run."""

from __future__ import annotations

from bench.fleet_bo_timeline import buckets


def test_buckets_join_latency_backlog_and_cpu_by_stretch() -> None:
    start = 1000.0
    decisions = [(1.0, 100.0), (2.0, 300.0), (9.0, 200.0), (12.0, 5000.0), (25.0, 9.0)]
    cpu = [
        (1000.0, {"earlystop": 0.0}, {"earlystop": 0.0}),
        # The refit child appears in the second sample.
        (1010.0, {"earlystop": 3.0, "suggest-refit-7": 5.0, "suggest": 9.0},
         {"earlystop": 6.0}),
        (1020.0, {"earlystop": 8.0, "suggest-refit-7": 6.0, "suggest": 9.0},
         {"earlystop": 7.0}),
    ]
    progress = [(0.0, 0, 0), (9.5, 50, 80), (19.0, 200, 500), (29.0, 600, 600)]
    got = buckets(start, 30.0, 10.0, decisions, cpu, progress)
    assert [(b["from_s"], b["to_s"]) for b in got] == [(0.0, 10.0), (10.0, 20.0), (20.0, 30.0)]
    first, second, third = got
    assert first["decisions"] == 3
    assert (first["decision_p50_ms"], first["decision_p99_ms"]) == (200.0, 300.0)
    assert first["earlystop_cores"] == 0.3
    assert first["refit_cores"] == 0.5
    assert first["earlystop_waiting_cores"] == 0.6
    assert first["earlystop_backlog"] == 30
    assert second["decisions"] == 1 and second["decision_p99_ms"] == 5000.0
    assert second["earlystop_cores"] == 0.5 and second["refit_cores"] == 0.1
    assert second["earlystop_backlog"] == 300
    # No CPU samples after 20 s: the stretch has latency and backlog only.
    assert third["decisions"] == 1 and "earlystop_cores" not in third
    assert third["earlystop_backlog"] == 0


def test_a_stretch_without_decisions_has_no_latency() -> None:
    (only,) = buckets(0.0, 5.0, 10.0, [], [], [])
    assert only["decisions"] == 0
    assert only["decision_p50_ms"] is None and only["earlystop_backlog"] is None
