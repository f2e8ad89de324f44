"""``trial_curves`` (services/lineage/curve_ends.py), on each engine: the writer keeps each
trial's point count and last point equal to what its stored points say, whatever the
batches, duplicates, replays and attempts; the schema step that adds it fills it from
the points already stored."""

from __future__ import annotations

import math
from typing import Any

import pytest
from test_lineage_store_contract import at_offsets, databases, metric  # noqa: F401

from services.lineage.curve_ends import recompute_sql
from services.lineage.db import Database
from services.lineage.schema import migrate
from services.lineage.store import LineageStore

pytestmark = pytest.mark.integration

def kept(db: Database) -> dict[str, tuple[Any, ...]]:
    return {
        row[0]: tuple(row[1:])
        for row in db.execute(
            "SELECT trial_id, study_id, points, last_step, last_ts_ms, last_attempt_id, "
            "last_value FROM trial_curves"
        ).fetchall()
    }


def from_scratch(db: Database) -> dict[str, tuple[Any, ...]]:
    return {row[0]: tuple(row[1:]) for row in db.execute(recompute_sql("1 = 1")).fetchall()}


def report(trial_id: str, step: float, value: float, attempt: int = 1, ts: int = 0) -> Any:
    point = metric(trial_id, step, value, attempt)
    point.ts_ms = ts or point.ts_ms
    return point


def test_the_writer_keeps_each_trials_count_and_last_point(
    databases: Any,  # noqa: F811
) -> None:
    store: LineageStore = databases.store()
    db = store.database
    # Two trials in one batch, points out of step order.
    store.apply(at_offsets([report("t1", 2, 0.5), report("t1", 1, 0.9), report("t2", 1, 0.7)]))
    assert kept(db)["t1"][1:] == (2, 2, 2002, "t1-a1", 0.5)
    # A later batch: t1 goes on; t2 reports the same step again at a new offset (a
    # producer retried) with another value: the first write wins, the count stays.
    store.apply(at_offsets([report("t1", 3, 0.4), report("t2", 1, 0.1)], first_offset=10))
    assert kept(db)["t1"][1:] == (3, 3, 2003, "t1-a1", 0.4)
    assert kept(db)["t2"][1:] == (1, 1, 2001, "t2-a1", 0.7)
    # Twice in one batch, and a second attempt re-reporting step 3 later: 5 rows.
    store.apply(at_offsets(
        [report("t1", 4, 0.3), report("t1", 4, 0.3), report("t1", 3, 0.35, attempt=2, ts=9000)],
        first_offset=20,
    ))
    assert kept(db)["t1"][1:] == (5, 4, 2004, "t1-a1", 0.3)
    # A step beyond, diverged: NaN is the last value (stored as NULL).
    store.apply(at_offsets([report("t1", 5, math.nan, attempt=2, ts=9100)], first_offset=30))
    assert kept(db)["t1"][1:] == (6, 5, 9100, "t1-a2", None)
    # Replayed at the same offsets: nothing changes.
    before = kept(db)
    store.apply(at_offsets([report("t1", 6, 0.2)], first_offset=30))
    assert kept(db) == before
    assert kept(db) == from_scratch(db)
    assert sum(row[1] for row in kept(db).values()) == db.execute(
        "SELECT COUNT(*) FROM metric_points"
    ).fetchone()[0]


def test_a_full_tie_on_step_and_time_goes_to_the_larger_attempt_id_in_any_order(
    databases: Any,  # noqa: F811
) -> None:
    stores = [databases.store(), databases.store()]
    a = report("t", 3, 0.5, attempt=1, ts=5000)
    b = report("t", 3, 0.6, attempt=2, ts=5000)
    stores[0].apply(at_offsets([a]))
    stores[0].apply(at_offsets([b], first_offset=1))
    stores[1].apply(at_offsets([b]))
    stores[1].apply(at_offsets([a], first_offset=1))
    assert kept(stores[0].database) == kept(stores[1].database) == from_scratch(
        stores[0].database
    )
    assert kept(stores[0].database)["t"][1:] == (2, 3, 5000, "t-a2", 0.6)


def test_the_schema_step_fills_it_from_the_stored_points(databases: Any) -> None:  # noqa: F811
    db = databases.open()
    assert migrate(db, target=4) == 4
    rows = [
        ("t1", "t1-a1", 1.0, 0.9, "s", "m", "w", 100),
        ("t1", "t1-a1", 2.0, 0.8, "s", "m", "w", 200),
        ("t1", "t1-a2", 2.0, 0.7, "s", "m", "w", 300),  # resumed, later
        ("t2", "t2-a1", 1.0, None, "s", "m", "w", 100),
        ("t3", "t3-a1", 1.0, 0.5, "other", "m", "w", 100),
    ]
    db.executemany(
        "INSERT INTO metric_points (trial_id, attempt_id, step, value, study_id, metric, "
        "worker_id, ts_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    LineageStore(db)  # the service's start-up: step 5
    assert kept(db) == {
        "t1": ("s", 3, 2.0, 300, "t1-a2", 0.7),
        "t2": ("s", 1, 1.0, 100, "t2-a1", None),
        "t3": ("other", 1, 1.0, 100, "t3-a1", 0.5),
    }
    assert [row[0] for row in db.execute("SELECT COUNT(*) FROM trial_curves")] == [3]
