"""The load simulator end to end, small: 50 simulated workers for a few seconds
against real suggest, evaluate and early-stop processes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from ladder.config import Settings

from workers.loadsim import LoadOptions, run

pytestmark = pytest.mark.integration


def test_fifty_simulated_workers_every_crossing_decided_once(
    infra: Settings, start_service: Callable
) -> None:
    suggest = start_service("services.suggest")
    evaluate = start_service("services.evaluate")
    start_service("services.earlystop")
    settings = dataclasses.replace(infra, suggest_addr=suggest.addr, evaluate_addr=evaluate.addr)
    # Rungs at steps 1, 3, 9 and 27 of 40, two reports a second: a trial that is not
    # stopped is still running when the 15 s run ends, so every STOP decided during
    # the run finds its trial alive (with trials shorter than the decision latency
    # of a loaded machine, STOPs arrived after their trials had completed). The
    # decisions of the last reports are waited for (drain, a deadline) before counting.
    options = LoadOptions(
        workers=50,
        processes=1,
        rate=2.0,
        duration=15.0,
        min_resource=1,
        max_resource=40,
        heartbeat_every=2,
        drain=30.0,
        seed=11,
    )

    summary = run(settings, options)

    reports = summary["reports"]
    assert reports["failed"] == 0 and reports["sent"] == reports["acked"] > 300
    counts = summary["counts"]
    assert counts["ok"], counts
    assert counts["expected_crossings"] == counts["decisions_on_topic"] > 100
    stops = summary["stops"]
    assert stops["on_topic"] > 0
    # No STOP is obeyed twice or invented, and every pruned trial obeyed one: each on
    # the Heartbeat after its decision (the simulator tails no decisions topic), with
    # no worker ever held at a rung (the stopping form never waits).
    assert 0 < stops["obeyed"] <= stops["on_topic"]
    assert summary["trials"]["pruned"] == stops["obeyed"]
    assert summary["latency_ms"]["report_to_stop_obeyed"]["n"] == stops["obeyed"]
    assert summary["holds"] == 0 and summary["trials"]["paused"] == 0
    assert "hold" not in summary["suggestions"]["worker_idle_seconds_by_call"]
    assert summary["rpc_errors"] == {}
