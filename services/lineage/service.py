"""LineageService over gRPC: thin handlers over ``LineageQueries``.

Each gRPC worker thread opens its own read connection on first use (a connection
is never shared across concurrent threads); SQLite's WAL and PostgreSQL's snapshots
let them read while the ingest thread writes. A store that cannot be reached
answers UNAVAILABLE (clients retry), not a bug's INTERNAL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import grpc
from ladder import auth
from ladder.errors import InvalidArgument, NotFound, Unavailable, require
from ladder.v1 import lineage_pb2, lineage_pb2_grpc

from services.lineage.answer_cache import AnswerCache
from services.lineage.curve_reads import (
    CURVE_CACHE_BYTES,
    CURVE_POINTS,
    CURVE_TRIALS,
    MAX_CURVE_POINTS,
    MAX_CURVE_TRIALS,
)
from services.lineage.db import TRANSIENT
from services.lineage.queries import LineageQueries
from services.lineage.trial_table import SUMMARY_CACHE_BYTES

_T = TypeVar("_T")


class LineageServicer(lineage_pb2_grpc.LineageServiceServicer):
    def __init__(self, open_queries: Callable[[], LineageQueries]) -> None:
        self._open_queries = open_queries
        self._local = threading.local()
        self._opened: list[LineageQueries] = []
        self._lock = threading.Lock()
        # What the dashboard's reads made, for its next poll (each entry checked
        # against the rows it was made from).
        self._curves = AnswerCache(CURVE_CACHE_BYTES)
        self._summaries = AnswerCache(SUMMARY_CACHE_BYTES)

    def _queries(self) -> LineageQueries:
        queries = getattr(self._local, "queries", None)
        if queries is None:
            queries = self._open_queries()
            self._local.queries = queries
            with self._lock:
                self._opened.append(queries)
        return queries

    def close(self) -> None:
        with self._lock:
            for queries in self._opened:
                queries.close()
            self._opened.clear()

    @contextmanager
    def _snapshot(self) -> Iterator[LineageQueries]:
        """This thread's queries in one consistent read."""
        try:
            with self._queries().snapshot() as queries:
                yield queries
        except TRANSIENT as exc:
            raise Unavailable(f"lineage store unreachable: {exc}") from exc

    def _read(self, query: Callable[[LineageQueries], _T | None], missing: str) -> _T:
        """``query``'s answer, read in one snapshot; NotFound(``missing``) when None."""
        with self._snapshot() as queries:
            found = query(queries)
        if found is None:
            raise NotFound(missing)
        return found

    def GetTrialLineage(
        self, request: lineage_pb2.GetTrialLineageRequest, context: grpc.ServicerContext
    ) -> lineage_pb2.TrialLineage:
        trial_id = require(request.trial_id, "trial_id")
        return self._read(lambda q: q.trial_lineage(trial_id), f"trial {trial_id!r} not found")

    def ListTrials(
        self, request: lineage_pb2.ListTrialsRequest, context: grpc.ServicerContext
    ) -> lineage_pb2.ListTrialsResponse:
        study_id = require(request.study_id, "study_id")
        return self._read(
            lambda q: q.list_trials_response(study_id, self._summaries),
            f"study {study_id!r} not found",
        )

    def GetBestTrial(
        self, request: lineage_pb2.GetBestTrialRequest, context: grpc.ServicerContext
    ) -> lineage_pb2.TrialLineage:
        study_id = require(request.study_id, "study_id")
        with self._snapshot() as queries:
            known = queries.study_known(study_id)
            best = queries.best_trial_id(study_id) if known else None
            lineage = queries.trial_lineage(best[0]) if best else None
        if not known:
            raise NotFound(f"study {study_id!r} not found")
        if lineage is None:
            raise NotFound(f"study {study_id!r} has no completed trial with a final value yet")
        return lineage

    def GetStudySummary(
        self, request: lineage_pb2.GetStudySummaryRequest, context: grpc.ServicerContext
    ) -> lineage_pb2.StudySummary:
        study_id = require(request.study_id, "study_id")
        return self._read(lambda q: q.study_summary(study_id), f"study {study_id!r} not found")

    def ListStudyListings(
        self, request: lineage_pb2.ListStudyListingsRequest, context: grpc.ServicerContext
    ) -> lineage_pb2.StudyListings:
        with self._snapshot() as queries:
            listings = queries.study_listings()
        return lineage_pb2.StudyListings(
            studies=[listing for listing in listings if auth.may_see(listing.study.tenant)]
        )

    def GetStudyCurves(
        self, request: lineage_pb2.GetStudyCurvesRequest, context: grpc.ServicerContext
    ) -> lineage_pb2.StudyCurves:
        study_id = require(request.study_id, "study_id")
        max_points = _within(request.max_points_per_trial, "max_points_per_trial",
                             MAX_CURVE_POINTS)
        max_trials = _within(request.max_trials, "max_trials", MAX_CURVE_TRIALS)
        return self._read(
            lambda q: q.study_curves(
                study_id, max_points or CURVE_POINTS, max_trials or CURVE_TRIALS, self._curves
            ),
            f"study {study_id!r} not found",
        )

    def GetStudyRungs(
        self, request: lineage_pb2.GetStudyRungsRequest, context: grpc.ServicerContext
    ) -> lineage_pb2.StudyRungs:
        study_id = require(request.study_id, "study_id")
        return self._read(lambda q: q.study_rungs(study_id), f"study {study_id!r} not found")


def _within(value: int, field: str, most: int) -> int:
    """``value``, or InvalidArgument naming ``field`` when it is negative (0: the default)
    or above ``most``."""
    if not 0 <= value <= most:
        raise InvalidArgument(
            f"{field} must be 0 (the default) or 1..{most}, got {value}"
        )
    return value
