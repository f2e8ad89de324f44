"""GetStudyCurves: a study's learning curves, at most ``max_trials`` of them (which ones:
``ladder.curves.pick_trials``), each down-sampled to ``max_points`` (``ladder.curves.
display_curve``: newest attempt per step, finite values only, first, last and each
bucket's extremes).

Which trials, and how many points each has, comes from ``trial_curves`` (a row per
trial, kept by the writer: ``curve_ends``). The points themselves are read only for
curves not already made for an earlier request: a down-sampled curve depends on nothing but
the trial's stored points (insert-only: the first write of a point wins) and its
attempts' numbers, so one made from the same point count and attempt numbers is the
same curve (``answer_cache``). A dashboard polling a big study reads the points of the
trials that moved, not of the 500 it shows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from itertools import groupby
from operator import itemgetter
from typing import NamedTuple

from ladder.curves import Candidate, Point, PointLike, display_curve, pick_trials
from ladder.v1 import lineage_pb2, trial_pb2

from services.lineage.answer_cache import AnswerCache
from services.lineage.db import Database
from services.lineage.study_reads import (
    MAXIMIZE,
    chunks,
    in_list,
    rows,
    stop_decisions,
)

TS = trial_pb2.TrialState
UNKNOWN = TS.Value("TRIAL_STATE_UNSPECIFIED")
CURVE_POINTS = 64  # GetStudyCurves' defaults
CURVE_TRIALS = 500
# The most a request may ask for: an answer stays well under ladder.limits'
# MAX_RESPONSE_BYTES (a point is ~24 bytes) and its reading bounded.
MAX_CURVE_POINTS = 1_000
MAX_CURVE_TRIALS = 2_000
CURVE_CACHE_BYTES = 32 << 20  # about 15,000 curves of 64 points


class _Stamp(NamedTuple):
    """What a down-sampled curve was made from."""

    points: int
    attempts: tuple[tuple[str, int], ...]  # (attempt id, number) of a resumed trial


def _resumed_attempts(db: Database, study_id: str) -> dict[str, dict[str, int]]:
    """Attempt numbers of the study's trials that ran more than once: only their
    points can share a step with another attempt's."""
    found: dict[str, dict[str, int]] = defaultdict(dict)
    for trial_id, attempt_id, number in rows(db.execute(
        "SELECT a.trial_id, a.attempt_id, a.attempt_number FROM attempts a WHERE "
        "a.trial_id IN (SELECT b.trial_id FROM attempts b JOIN trials t "
        "ON t.trial_id = b.trial_id WHERE t.study_id = ? AND b.attempt_number > 1)",
        (study_id,),
    )):
        found[trial_id][attempt_id] = number
    return found


def _points(
    db: Database, trial_ids: Sequence[str], numbers: dict[str, dict[str, int]]
) -> dict[str, list[PointLike]]:
    """Per trial: its points as read, laid out as ``ladder.curves.Point`` (with the trial
    id after), by step. Only a resumed trial's points are copied, to carry their
    attempt numbers: a big curve read is mostly making row objects."""
    found: dict[str, list[PointLike]] = {}
    for chunk in chunks(trial_ids):
        for trial_id, group in groupby(
            rows(db.execute(
                "SELECT step, value, ts_ms, attempt_id, 0, trial_id FROM metric_points "
                f"WHERE trial_id IN {in_list(chunk)} ORDER BY trial_id, step",
                tuple(chunk),
            )),
            key=itemgetter(5),
        ):
            points = list(group)
            attempts = numbers.get(trial_id)
            if attempts:
                points = [Point(*p[:4], attempts.get(p[3], 0)) for p in points]
            found[trial_id] = points
    return found


def _curve_points(points: list[PointLike], max_points: int) -> bytes:
    curve = lineage_pb2.TrialCurve()
    add = curve.points.add
    for step, value, ts_ms, attempt_id, *_ in display_curve(points, max_points):
        add(step=step, value=value, ts_ms=ts_ms, attempt_id=attempt_id)
    return curve.SerializeToString()


def study_curves(
    db: Database, study_id: str, max_points: int, max_trials: int, cache: AnswerCache
) -> lineage_pb2.StudyCurves:
    """The study's learning curves (see the module doc)."""
    study = db.execute(
        "SELECT direction, metric FROM studies WHERE study_id = ?", (study_id,)
    ).fetchone()
    maximize = study is not None and study[0] == MAXIMIZE
    reply = lineage_pb2.StudyCurves(study_id=study_id, metric=study[1] if study else "")
    # Per trial of the study with points: its count and last point (trial_curves),
    # state and final value. Only trials the study's trial events made: anyone may
    # publish metrics, and points of a trial id nobody created ("phantom" trials with
    # good values) must not take the places of real curves (docs/bus-security.md).
    found = rows(db.execute(
        "SELECT c.trial_id, c.points, c.last_value, c.last_ts_ms, t.state, "
        "t.has_final_value, t.final_value FROM trial_curves c "
        "JOIN trials t ON t.trial_id = c.trial_id AND t.study_id = c.study_id "
        "WHERE c.study_id = ?",
        (study_id,),
    ))
    reply.total_trials = len(found)
    reply.total_points = sum(row[1] for row in found)
    picked = [
        candidate.trial_id
        for candidate in pick_trials(
            (
                Candidate(trial_id, final if has_final and final is not None else last, ts_ms)
                for trial_id, _, last, ts_ms, _, has_final, final in found
            ),
            max_trials,
            maximize,
        )
    ]
    if not picked:
        return reply
    ends = {row[0]: row for row in found}
    numbers = _resumed_attempts(db, study_id)
    stamps = {
        trial_id: _Stamp(ends[trial_id][1], tuple(sorted(numbers.get(trial_id, {}).items())))
        for trial_id in picked
    }
    made = dict(zip(
        picked, cache.get([((t, max_points), stamps[t]) for t in picked]), strict=True
    ))
    missing = [trial_id for trial_id, curve in made.items() if curve is None]
    for trial_id, points in _points(db, missing, numbers).items():
        made[trial_id] = _curve_points(points, max_points)
    cache.put([((t, max_points), stamps[t], made[t] or b"") for t in missing])
    stops = stop_decisions(db, study_id, picked)
    for trial_id in picked:
        _, points, _, _, state, _, _ = ends[trial_id]
        curve = reply.curves.add(
            trial_id=trial_id, state=TS.Name(state or UNKNOWN), total_points=points
        )
        curve.MergeFromString(made[trial_id] or b"")
        stop = stops.get(trial_id)
        if stop is not None:
            curve.stop_reason, curve.stop_step = stop.reason, stop.resource
    return reply
