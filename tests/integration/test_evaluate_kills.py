"""kill -9 of evaluate during a running study: every event of every trial still
reaches the trials topic and lineage, in order (the outbox keeps each one until the
broker acknowledged it; see ladder.state.trials). The long run is
``make bench-evaluate-kills``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ladder.config import Settings
from ladder.testing.kills import evaluate_kills_study

pytestmark = pytest.mark.integration


def test_every_trial_event_survives_three_kills_of_evaluate(
    infra: Settings, start_service: Callable[..., Any], tmp_path: Path
) -> None:
    report = evaluate_kills_study(
        start_service,
        infra,
        tmp_path / "lineage.sqlite3",
        kills=3,
        trials=12,
        workers=4,
        checkpoints=4,
        pace=0.05,
        kill_every=10,
        drain=30,
    )
    assert report["kills"] == 3 and not report["worker_errors"]
    assert report["problems"] == [] and report["outbox_left"] == 0, report
    assert report["events_in_lineage"] == report["events_expected"] == 12 * 7, report
    assert report["ok"], report
