"""Per trial, its curve's end: how many metric points it has and the last one, kept in
``trial_curves`` by the writer in the same transaction as the points themselves.

A study-wide read (the dashboard's curves, trial table and summaries) would otherwise
group every point of the study (500,000 index entries for a 20,000-trial study) on each
request; this table holds one row per trial instead.

The row is a function of the trial's stored points, whatever order or how often they
arrived:

- ``points``: how many rows ``metric_points`` holds for the trial;
- ``last_*``: the point with the largest step, then the latest report (``ts_ms``), then
  the largest attempt id: the same total order everywhere, so merging a batch into the
  row (``record``) and computing it from scratch (``RECOMPUTE``, the migration's
  backfill) agree;
- ``study_id``: the smallest study id its points name (one, unless a publisher mixed).

``record`` adds a batch by counting the batch's rows, which is exact when every row was
inserted (the executemany's count says so); when some were not (a point published twice:
the first write wins), it recomputes the touched trials from ``metric_points`` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.lineage.db import Database

# metric_points rows as the store inserts them.
TRIAL, ATTEMPT, STEP, VALUE, STUDY, _METRIC, _WORKER, TS = range(8)

_NEWER = (
    "(excluded.last_step > trial_curves.last_step OR (excluded.last_step = "
    "trial_curves.last_step AND (excluded.last_ts_ms > trial_curves.last_ts_ms OR "
    "(excluded.last_ts_ms = trial_curves.last_ts_ms AND "
    "excluded.last_attempt_id > trial_curves.last_attempt_id))))"
)
_COLUMNS = "trial_id, study_id, points, last_step, last_ts_ms, last_attempt_id, last_value"
_ADD = (
    f"INSERT INTO trial_curves ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (trial_id) DO UPDATE SET points = trial_curves.points + excluded.points, "
    "study_id = CASE WHEN excluded.study_id < trial_curves.study_id "
    "THEN excluded.study_id ELSE trial_curves.study_id END, "
    + ", ".join(
        f"{column} = CASE WHEN {_NEWER} THEN excluded.{column} ELSE trial_curves.{column} END"
        for column in ("last_value", "last_attempt_id", "last_ts_ms", "last_step")
    )
)
_SET = (
    f"INSERT INTO trial_curves ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (trial_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS.split(", ")[1:])
)


def recompute_sql(where: str) -> str:
    """SELECT of ``trial_curves`` rows from scratch for the trials ``where`` (a condition
    on ``metric_points`` aliased ``p``) selects."""
    return (
        f"SELECT ends.trial_id, ends.study_id, ends.points, m.step, m.ts_ms, m.attempt_id, "
        "m.value FROM ("
        " SELECT p.trial_id, MIN(p.study_id) AS study_id, COUNT(*) AS points, "
        f" MAX(p.step) AS step FROM metric_points p WHERE {where} GROUP BY p.trial_id"
        ") ends JOIN metric_points m ON m.trial_id = ends.trial_id AND m.step = ends.step "
        "WHERE NOT EXISTS (SELECT 1 FROM metric_points n WHERE n.trial_id = m.trial_id "
        "AND n.step = m.step AND (n.ts_ms > m.ts_ms OR (n.ts_ms = m.ts_ms "
        "AND n.attempt_id > m.attempt_id)))"
    )


# The migration's backfill: every trial with points.
BACKFILL = f"INSERT INTO trial_curves ({_COLUMNS}) {recompute_sql('1 = 1')}"
_CHUNK = 500


def _later(row: Sequence[Any], end: list[Any]) -> bool:
    return (row[STEP], row[TS], row[ATTEMPT]) > (end[2], end[3], end[4])


def record(db: Database, rows: Sequence[Sequence[Any]], inserted: int) -> None:
    """Fold a batch of metric rows, ``inserted`` of which were new, into trial_curves."""
    ends: dict[str, list[Any]] = {}
    for row in rows:
        end = ends.get(row[TRIAL])
        if end is None:
            ends[row[TRIAL]] = [row[STUDY], 1, row[STEP], row[TS], row[ATTEMPT], row[VALUE]]
            continue
        end[1] += 1
        end[0] = min(end[0], row[STUDY])
        if _later(row, end):
            end[2:] = [row[STEP], row[TS], row[ATTEMPT], row[VALUE]]
    if inserted == len(rows):
        db.executemany(_ADD, [(trial_id, *end) for trial_id, end in ends.items()])
        return
    touched = list(ends)
    for start in range(0, len(touched), _CHUNK):
        chunk = touched[start:start + _CHUNK]
        found = db.execute(
            recompute_sql(f"p.trial_id IN ({', '.join('?' for _ in chunk)})"), chunk
        ).fetchall()
        db.executemany(_SET, [tuple(row) for row in found])
