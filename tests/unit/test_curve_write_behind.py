"""CurveWriteBehind: stage 1's coalesced curve-table writes (pure logic, fake table)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ladder.testing import FakeTable

from services.earlystop import tables
from services.earlystop.tables import CurveWriteBehind


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_staged_states_are_read_back_and_written_once_per_trial_at_flush() -> None:
    table = FakeTable()
    table.data["t-old"] = {"last_step": 1}
    cache = CurveWriteBehind(table, interval=5.0)
    cache.stage({"t1": (0, {"last_step": 1})})
    cache.hold(["e1"])
    cache.stage({"t1": (0, {"last_step": 2}), "t2": (3, {"last_step": 1})})
    cache.hold(["e2", "e3"])

    assert cache.get("t1") == {"last_step": 2}  # the newest staged state wins
    assert cache.get("t-old") == {"last_step": 1}  # else the table
    assert table.changelog_topic.sent == []  # nothing written before the flush

    released = run(cache.flush())

    assert released == ["e1", "e2", "e3"]
    assert sorted(table.changelog_topic.sent) == [
        ("t1", {"last_step": 2}, 0),
        ("t2", {"last_step": 1}, 3),
    ]
    assert table.data["t1"] == {"last_step": 2}
    assert not cache.holding


def test_flush_is_due_after_the_interval_or_when_too_many_events_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [100.0]
    monkeypatch.setattr(tables.time, "monotonic", lambda: clock[0])
    cache = CurveWriteBehind(FakeTable(), interval=5.0, max_held=3)
    cache.hold(["e1"])
    assert cache.due_in() == pytest.approx(5.0)
    clock[0] = 104.0
    assert cache.due_in() == pytest.approx(1.0)
    clock[0] = 105.5
    assert cache.due_in() == 0.0
    clock[0] = 100.0
    cache.hold(["e2", "e3"])
    assert cache.due_in() == 0.0  # max_held reached

    assert CurveWriteBehind(FakeTable(), interval=0.0).due_in() == 0.0


def test_a_failed_flush_keeps_states_and_events_for_the_retry() -> None:
    table = FakeTable()
    cache = CurveWriteBehind(table, interval=1.0)
    cache.stage({"t1": (2, {"last_step": 4})})
    cache.hold(["e1"])
    table.changelog_topic.fail = True
    with pytest.raises(ConnectionError):
        run(cache.flush())
    assert cache.holding and cache.get("t1") == {"last_step": 4}

    table.changelog_topic.fail = False
    assert run(cache.flush()) == ["e1"]
    assert table.changelog_topic.sent == [("t1", {"last_step": 4}, 2)]
