"""ListTrials: every trial of a study, oldest first, with what a trial table shows (state,
values, params, sampler and prediction, timing, attempts, the decision that stopped or
paused it).

Three statements whatever the number of trials: the trials with their curve end
(``trial_curves``), attempt counts, the newest STOP / PAUSE decision's position per
trial. A summary is a function of those rows (and of the params and decision they
point to, which never change once stored), so each trial's serialized summary is kept
with the row it was made from (``answer_cache``): a big study's table is rebuilt
only for the trials that moved since the last request, and only their params and
decisions are read. The rows are still read each time: nothing stale is ever sent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ladder.v1 import events_pb2, lineage_pb2, trial_pb2

from services.lineage.answer_cache import AnswerCache
from services.lineage.db import Database
from services.lineage.study_reads import (
    PAUSE,
    STOP,
    chunks,
    decisions_by_id,
    in_list,
    newest_stops,
    rows,
)

TS = trial_pb2.TrialState
_STATE_NAMES = {value: TS.Name(value) for value in TS.values()}
SUMMARY_CACHE_BYTES = 64 << 20  # about 80,000 trials of a few params


def trial_summaries(
    db: Database, study_id: str, cache: AnswerCache
) -> lineage_pb2.ListTrialsResponse:
    """Every trial of the study, oldest first (see the module doc)."""
    trials = rows(db.execute(
        "SELECT t.trial_id, t.state, t.has_final_value, t.final_value, t.last_step, "
        "t.params_pb IS NOT NULL, t.algorithm, t.first_ts_ms, t.terminal_ts_ms, "
        "t.train_seconds, t.failure_kind, t.predicted_mean, t.predicted_std, c.last_step "
        "FROM trials t LEFT JOIN trial_curves c ON c.trial_id = t.trial_id "
        "WHERE t.study_id = ?",
        (study_id,),
    ))
    # Oldest first. Sorted here: PostgreSQL would sort these wide rows on disk over
    # its default work_mem. Python orders str by code point, as SQLite's BINARY and
    # PostgreSQL's "C" collation order UTF-8 bytes.
    trials.sort(key=lambda row: (row[7], row[0]))
    attempts = dict(rows(db.execute(
        "SELECT a.trial_id, COUNT(*) FROM attempts a JOIN trials t "
        "ON t.trial_id = a.trial_id WHERE t.study_id = ? GROUP BY a.trial_id",
        (study_id,),
    )))
    stops = newest_stops(db, study_id)
    made_from = [(*row, attempts.get(row[0], 0), stops.get(row[0])) for row in trials]
    made = cache.get([(row[0], row) for row in made_from])
    missing = [at for at, summary in enumerate(made) if summary is None]
    # A first request (or one after most trials moved) reads by study, not by id.
    built = _summaries(
        db, [made_from[at] for at in missing], study_id if len(missing) > len(made) // 4 else None
    )
    for at, summary in zip(missing, built, strict=True):
        made[at] = summary
    cache.put([
        (made_from[at][0], made_from[at], summary)
        for at, summary in zip(missing, built, strict=True)
    ])
    reply = lineage_pb2.ListTrialsResponse()
    add = reply.trials.add
    for summary in made:
        add().MergeFromString(summary or b"")
    return reply


def _summaries(
    db: Database, made_from: Sequence[tuple[Any, ...]], study_id: str | None
) -> list[bytes]:
    """Serialized summaries of these trials, from their rows (``trial_summaries``); their
    params and decisions read by id, or by ``study_id`` when given."""
    if not made_from:
        return []
    if study_id is not None:
        params = dict(rows(db.execute(
            "SELECT trial_id, params_pb FROM trials "
            "WHERE study_id = ? AND params_pb IS NOT NULL",
            (study_id,),
        )))
        blobs = dict(rows(db.execute(
            f"SELECT id, decision_pb FROM decisions WHERE study_id = ? "
            f"AND action IN ({STOP}, {PAUSE})",
            (study_id,),
        )))
        decisions = {
            stop[1]: events_pb2.Decision.FromString(bytes(blobs[stop[1]]))
            for *_, stop in made_from
            if stop is not None
        }
    else:
        ids = [row[0] for row in made_from]
        params = {
            trial_id: blob
            for chunk in chunks(ids)
            for trial_id, blob in rows(db.execute(
                "SELECT trial_id, params_pb FROM trials "
                f"WHERE params_pb IS NOT NULL AND trial_id IN {in_list(chunk)}",
                tuple(chunk),
            ))
        }
        decisions = decisions_by_id(
            db, [row[-1][1] for row in made_from if row[-1] is not None]
        )
    found = []
    for (trial_id, state, has_final, final, last_step, _, algorithm, first_ts, terminal_ts,
         train_seconds, failure_kind, mean, std, last_reported, attempts, stop) in made_from:
        summary = lineage_pb2.TrialSummary(
            trial_id=trial_id,
            state=_STATE_NAMES.get(state) or TS.Name(state),
            has_final_value=bool(has_final),
            final_value=(math.nan if final is None else final) if has_final else 0.0,
            last_step=max(last_step, last_reported or 0.0),
            algorithm=algorithm,
            first_ts_ms=first_ts,
            terminal_ts_ms=terminal_ts,
            attempts=attempts,
            train_seconds=train_seconds,
            failure_kind=failure_kind,
            predicted_mean=math.nan if mean is None else mean,
            predicted_std=math.nan if std is None else std,
        )
        if trial_id in params:
            summary.MergeFromString(summary_params(bytes(params[trial_id])))
        if stop is not None:
            decision: events_pb2.Decision = decisions[stop[1]]
            summary.stop_reason, summary.stop_rung = decision.reason, decision.rung
            summary.stop_step = decision.resource
        found.append(summary.SerializeToString())
    return found


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
