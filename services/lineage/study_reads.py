"""The study-wide reads of the lineage store (what the dashboard shows): every study with its
summary, and a study's rung statistics (its trial table: ``trial_table``; its learning
curves: ``curve_reads``), and what those share.

Each reply is a fixed number of statements, one per table and grouped in SQL (never one
per trial or per study), joined here by id; what only Python can do (decoding a decision,
down-sampling a curve: ``ladder.curves``) runs on the rows that are sent. The caller
wraps a reply's statements in one snapshot (``LineageQueries.snapshot``).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from ladder.v1 import events_pb2, lineage_pb2, study_pb2, trial_pb2
from psycopg.rows import tuple_row

from services.lineage.db import Database

TS = trial_pb2.TrialState
MAXIMIZE = study_pb2.Direction.Value("MAXIMIZE")
STOP, PAUSE = events_pb2.Action.Value("STOP"), events_pb2.Action.Value("PAUSE")
CONTINUE, PROMOTE = events_pb2.Action.Value("CONTINUE"), events_pb2.Action.Value("PROMOTE")
_COMPLETED = TS.Value("COMPLETED")
_IN_CHUNK = 500  # ids per IN (...) list: far below either engine's parameter limit


def from_real(value: float | None) -> float:
    """A stored REAL back to a float: NULL is NaN."""
    return math.nan if value is None else value


def rows(cursor: Any) -> list[tuple[Any, ...]]:
    """A cursor's rows as plain tuples: the big reads fetch tens of thousands of rows,
    and a row readable by column name costs a third more to make."""
    if isinstance(cursor, sqlite3.Cursor):
        cursor.row_factory = None
    else:
        cursor.row_factory = tuple_row
    return cursor.fetchall()


def chunks(ids: Sequence[Any]) -> Iterable[Sequence[Any]]:
    """``ids`` in slices short enough for one ``IN (...)`` list each."""
    for start in range(0, len(ids), _IN_CHUNK):
        yield ids[start:start + _IN_CHUNK]


def in_list(ids: Sequence[Any]) -> str:
    """``(?, ?, ...)``: one placeholder per id."""
    return f"({', '.join('?' for _ in ids)})"


def _finite_final(table: str) -> str:
    """Best-trial candidates: completed with a finite final value (NaN is stored as NULL,
    and +-inf fall outside this range)."""
    return (
        f"{table}.state = {_COMPLETED} AND {table}.has_final_value = 1 "
        f"AND {table}.final_value IS NOT NULL "
        f"AND {table}.final_value BETWEEN -1.7976931348623157e308 AND 1.7976931348623157e308"
    )


def _study_filter(study_id: str | None, column: str = "study_id") -> tuple[str, tuple[str, ...]]:
    """A WHERE clause restricting ``column`` to one study, or none for every study."""
    return (f"WHERE {column} = ?", (study_id,)) if study_id is not None else ("", ())


# -- summaries -------------------------------------------------------------------------


def best_trials(db: Database, study_id: str | None = None) -> dict[str, tuple[str, float]]:
    """Per study: the completed trial with the best finite final value, direction aware
    (an unknown study minimizes; ties: the one that ended first, then by id)."""
    where, params = _study_filter(study_id, "t.study_id")
    where = f"{where} AND" if where else "WHERE"
    rows = db.execute(
        "SELECT study_id, trial_id, final_value FROM ("
        " SELECT t.study_id, t.trial_id, t.final_value, ROW_NUMBER() OVER ("
        "  PARTITION BY t.study_id ORDER BY"
        f"  CASE WHEN s.direction = {MAXIMIZE} THEN -t.final_value ELSE t.final_value END,"
        "  t.terminal_ts_ms, t.trial_id) AS place"
        " FROM trials t LEFT JOIN studies s ON s.study_id = t.study_id"
        f" {where} {_finite_final('t')}"
        ") ranked WHERE place = 1",
        params,
    ).fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


def summaries(db: Database, study_id: str | None = None) -> dict[str, lineage_pb2.StudySummary]:
    """StudySummary per study that has trials, metric points or decisions (one study, or
    all): five grouped statements whatever the number of studies."""
    found: dict[str, lineage_pb2.StudySummary] = {}

    def summary(sid: str) -> lineage_pb2.StudySummary:
        if sid not in found:
            found[sid] = lineage_pb2.StudySummary(study_id=sid)
        return found[sid]

    where, params = _study_filter(study_id)
    states = {
        TS.Value("SUGGESTED"): "suggested",
        # A resumable trial is still in flight: it has run and will run again.
        TS.Value("RUNNING"): "running",
        TS.Value("RESUMABLE"): "running",
        TS.Value("COMPLETED"): "completed",
        TS.Value("PRUNED"): "pruned",
        TS.Value("FAILED"): "failed",
    }
    for sid, state, count, checkpoint, train in db.execute(
        "SELECT study_id, state, COUNT(*), COALESCE(SUM(checkpoint_seconds), 0), "
        f"COALESCE(SUM(train_seconds), 0) FROM trials {where} GROUP BY study_id, state",
        params,
    ).fetchall():
        row = summary(sid)
        if state in states:
            setattr(row, states[state], getattr(row, states[state]) + count)
        row.checkpoint_seconds += checkpoint
        row.train_seconds += train
    for sid, count in db.execute(
        f"SELECT study_id, SUM(points) FROM trial_curves {where} GROUP BY study_id", params
    ).fetchall():
        summary(sid).metric_points = int(count)  # PostgreSQL sums a BIGINT as a NUMERIC
    for sid, count in db.execute(
        f"SELECT study_id, COUNT(*) FROM decisions {where} GROUP BY study_id", params
    ).fetchall():
        summary(sid).decisions = count
    for sid, (trial_id, value) in best_trials(db, study_id).items():
        row = summary(sid)
        row.has_best, row.best_trial_id, row.best_value = True, trial_id, value
    return found


def listings(db: Database) -> list[lineage_pb2.StudyListing]:
    """Every study of the studies table with its summary, newest first."""
    found = summaries(db)
    studies = [
        study_pb2.Study.FromString(row[0])
        for row in db.execute("SELECT study_pb FROM studies").fetchall()
    ]
    studies.sort(key=lambda s: (-s.created_unix_ms, s.study_id))
    return [
        lineage_pb2.StudyListing(
            study=study,
            summary=found.get(study.study_id) or lineage_pb2.StudySummary(study_id=study.study_id),
        )
        for study in studies
    ]


# -- trials ----------------------------------------------------------------------------


def newest_stops(
    db: Database, study_id: str, trial_ids: Sequence[str] | None = None
) -> dict[str, tuple[int, int]]:
    """Per trial of the study (of ``trial_ids`` only, if given): the (ts, id) of its
    newest STOP or PAUSE decision (by ts, then arrival)."""
    sql = (
        "SELECT trial_id, ts_ms, id FROM decisions "
        f"WHERE study_id = ? AND action IN ({STOP}, {PAUSE})"
    )
    if trial_ids is None:
        found = rows(db.execute(sql, (study_id,)))
    else:
        found = [
            row
            for chunk in chunks(trial_ids)
            for row in rows(db.execute(
                f"{sql} AND trial_id IN {in_list(chunk)}", (study_id, *chunk)
            ))
        ]
    newest: dict[str, tuple[int, int]] = {}
    for trial_id, ts_ms, ident in found:
        kept = newest.get(trial_id)
        if kept is None or (ts_ms, ident) > kept:
            newest[trial_id] = (ts_ms, ident)
    return newest


def decisions_by_id(db: Database, ids: Sequence[int]) -> dict[int, events_pb2.Decision]:
    found = {}
    for chunk in chunks(ids):
        for ident, blob in rows(db.execute(
            f"SELECT id, decision_pb FROM decisions WHERE id IN {in_list(chunk)}", tuple(chunk)
        )):
            found[ident] = events_pb2.Decision.FromString(bytes(blob))
    return found


def stop_decisions(
    db: Database, study_id: str, trial_ids: Sequence[str] | None = None
) -> dict[str, events_pb2.Decision]:
    """Per trial of the study (of ``trial_ids`` only, if given): its newest STOP or PAUSE
    decision."""
    newest = newest_stops(db, study_id, trial_ids)
    found = decisions_by_id(db, [ident for _, ident in newest.values()])
    return {trial_id: found[ident] for trial_id, (_, ident) in newest.items()}


# -- rungs -----------------------------------------------------------------------------


def study_rungs(db: Database, study_id: str) -> lineage_pb2.StudyRungs:
    """Per rung with decisions: how many trials reached it and what became of them, and
    the newest decision's resource and cutoff."""
    reply = lineage_pb2.StudyRungs(study_id=study_id)
    counts = db.execute(
        "SELECT rung, COUNT(DISTINCT trial_id), "
        f"COUNT(DISTINCT CASE WHEN action IN ({CONTINUE}, {PROMOTE}) THEN trial_id END), "
        f"COUNT(DISTINCT CASE WHEN action = {STOP} THEN trial_id END), "
        f"COUNT(DISTINCT CASE WHEN action = {PAUSE} THEN trial_id END) "
        "FROM decisions WHERE study_id = ? GROUP BY rung ORDER BY rung",
        (study_id,),
    ).fetchall()
    newest: dict[int, tuple[int, int, bytes]] = {}
    for rung, ts_ms, ident, blob in db.execute(
        "SELECT d.rung, d.ts_ms, d.id, d.decision_pb FROM decisions d JOIN ("
        " SELECT rung, MAX(ts_ms) AS ts_ms FROM decisions WHERE study_id = ? GROUP BY rung"
        ") n ON d.rung = n.rung AND d.ts_ms = n.ts_ms WHERE d.study_id = ?",
        (study_id, study_id),
    ).fetchall():
        if rung not in newest or (ts_ms, ident) > newest[rung][:2]:
            newest[rung] = (ts_ms, ident, blob)
    for rung, population, promoted, stopped, paused in counts:
        decision = events_pb2.Decision.FromString(bytes(newest[rung][2]))
        reply.rungs.add(
            rung=rung, resource=decision.resource, population=population, promoted=promoted,
            stopped=stopped, paused=paused, cutoff=decision.cutoff,
        )
    return reply
