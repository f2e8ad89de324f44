"""The study-wide reads of the lineage store (what the dashboard shows): every study with its
summary, every trial of a study with its stopping decision, its rung statistics (its
learning curves: ``curve_reads``).

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


def chunks(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    """``ids`` in slices short enough for one ``IN (...)`` list each."""
    for start in range(0, len(ids), _IN_CHUNK):
        yield ids[start:start + _IN_CHUNK]


def in_list(ids: Sequence[str]) -> str:
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


def stop_decisions(
    db: Database, study_id: str, trial_ids: Sequence[str] | None = None
) -> dict[str, events_pb2.Decision]:
    """Per trial of the study (of ``trial_ids`` only, if given): its newest STOP or PAUSE
    decision (by ts, then arrival)."""
    sql = (
        "SELECT trial_id, ts_ms, id, decision_pb FROM decisions "
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
    newest: dict[str, tuple[int, int, bytes]] = {}
    for trial_id, ts_ms, ident, blob in found:
        kept = newest.get(trial_id)
        if kept is None or (ts_ms, ident) > kept[:2]:
            newest[trial_id] = (ts_ms, ident, blob)
    return {
        trial_id: events_pb2.Decision.FromString(bytes(blob))
        for trial_id, (_, _, blob) in newest.items()
    }


def trial_summaries(db: Database, study_id: str) -> lineage_pb2.ListTrialsResponse:
    """Every trial of the study, oldest first, with what a trial table shows."""
    trials = rows(db.execute(
        "SELECT t.trial_id, t.state, t.has_final_value, t.final_value, t.last_step, "
        "t.params_pb, t.algorithm, t.first_ts_ms, t.terminal_ts_ms, t.train_seconds, "
        "t.failure_kind, t.predicted_mean, t.predicted_std, c.last_step "
        "FROM trials t LEFT JOIN trial_curves c ON c.trial_id = t.trial_id "
        "WHERE t.study_id = ?",
        (study_id,),
    ))
    # Oldest first. Sorted here: PostgreSQL would sort these wide rows on disk
    # (4 MB at 20,000 trials, over its default work_mem). Python orders str by code
    # point, as SQLite's BINARY and PostgreSQL's "C" collation order UTF-8 bytes.
    trials.sort(key=lambda row: (row[7], row[0]))
    attempts = dict(rows(db.execute(
        "SELECT a.trial_id, COUNT(*) FROM attempts a JOIN trials t "
        "ON t.trial_id = a.trial_id WHERE t.study_id = ? GROUP BY a.trial_id",
        (study_id,),
    )))
    stops = stop_decisions(db, study_id)
    reply = lineage_pb2.ListTrialsResponse()
    add = reply.trials.add
    state_names = {value: TS.Name(value) for value in TS.values()}
    for (trial_id, state, has_final, final, last_step, params_pb, algorithm, first_ts,
         terminal_ts, train_seconds, failure_kind, mean, std, last_reported) in trials:
        summary = add(
            trial_id=trial_id,
            state=state_names.get(state) or TS.Name(state),
            has_final_value=bool(has_final),
            final_value=(math.nan if final is None else final) if has_final else 0.0,
            last_step=max(last_step, last_reported or 0.0),
            algorithm=algorithm,
            first_ts_ms=first_ts,
            terminal_ts_ms=terminal_ts,
            attempts=attempts.get(trial_id, 0),
            train_seconds=train_seconds,
            failure_kind=failure_kind,
            predicted_mean=math.nan if mean is None else mean,
            predicted_std=math.nan if std is None else std,
        )
        if params_pb:
            summary.MergeFromString(summary_params(bytes(params_pb)))
        stop = stops.get(trial_id)
        if stop is not None:
            summary.stop_reason, summary.stop_rung = stop.reason, stop.rung
            summary.stop_step = stop.resource
    return reply


# Where TrialSummary keeps its params: field 6, length-delimited.
_SUMMARY_PARAMS_TAG = (
    lineage_pb2.TrialSummary.DESCRIPTOR.fields_by_name["params"].number << 3 | 2
)
# The stored params_pb: a Trial holding only its params (field 3, length-delimited).
_TRIAL_PARAMS_TAG = trial_pb2.Trial.DESCRIPTOR.fields_by_name["params"].number << 3 | 2


def summary_params(params_pb: bytes) -> bytes:
    """The stored params (a serialized Trial holding only params) as serialized
    TrialSummary params: the same map entries under TrialSummary's field number.

    Parsing 20,000 Trials and copying their params entry by entry was most of the
    time of a big ListTrials; this rewrites the tag byte of each entry in a copy. Both
    maps have one entry type (string -> ParamValue), so only the tags differ. Anything
    else in ``params_pb`` (another field: not written by this store) is decoded the
    slow way instead."""
    out = bytearray(params_pb)
    at, end = 0, len(params_pb)
    while at < end:
        if params_pb[at] != _TRIAL_PARAMS_TAG:
            return _summary_params_slowly(params_pb)
        out[at] = _SUMMARY_PARAMS_TAG
        at += 1
        length = shift = 0
        while True:  # the entry's length: a varint
            if at >= end:
                return _summary_params_slowly(params_pb)
            byte = params_pb[at]
            at += 1
            length |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
        at += length
    if at != end:
        return _summary_params_slowly(params_pb)
    return bytes(out)


def _summary_params_slowly(params_pb: bytes) -> bytes:
    summary = lineage_pb2.TrialSummary()
    for name, value in trial_pb2.Trial.FromString(params_pb).params.items():
        summary.params[name].CopyFrom(value)
    return summary.SerializeToString()


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
