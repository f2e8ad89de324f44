"""What the dashboard knows, read from lineage's gRPC query API only, and kept for a
moment: every viewer of a study shares one read of it per ``STUDY_TTL`` (a study of
20,000 trials is several megabytes of answers), the importances are refitted at most
every ``IMPORTANCE_TTL`` while the study changes, the recommended trial (a GP fit) every
``RECOMMENDATION_TTL``.

gRPC failures become :class:`SourceError` with the HTTP status and message the page
shows: NOT_FOUND is 404, a lineage that does not answer 503, one that lacks an RPC
(an older lineage service) 502.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ladder import channels, limits
from ladder.config import Settings
from ladder.dashboard.importance import Importances, importances
from ladder.dashboard.study import StudyData, recommendation
from ladder.params import PlainValue
from ladder.v1 import lineage_pb2, lineage_pb2_grpc, study_pb2

T = TypeVar("T")
log = logging.getLogger("ladder.dashboard")

LISTINGS_TTL = 2.0
SUMMARY_TTL = 0.5
STUDY_TTL = 2.0
# How long an expired read of a study may still open its page while a new read runs.
STUDY_STALE = 60.0
IMPORTANCE_TTL = 15.0
# The recommended trial is a GP fit on up to 512 trials, seconds of CPU on a big study
# (cubic in the trials fitted), so a live study's is refitted less often than its
# importances.
RECOMMENDATION_TTL = 60.0
CALL_TIMEOUT = 20.0

# ListTrials of a study of 20,000 trials is well over gRPC's default 4 MB: the answer
# size every Ladder client accepts (ladder.limits).
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", limits.MAX_RESPONSE_BYTES),
    ("grpc.max_send_message_length", limits.MAX_REQUEST_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class SourceError(Exception):
    """A failed read, as the HTTP status and message the page shows."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Entry(Generic[T]):
    value: T
    at: float


class TtlCache(Generic[T]):
    """Values by key, fresh for ``ttl`` seconds; concurrent misses of one key wait for
    one fetch. With ``stale`` seconds, an expired value younger than ``ttl + stale`` is
    answered at once while one fetch renews it in the background (a big study takes
    lineage seconds to read: a viewer gets the last read instead of waiting for the
    next); ``get(..., fresh=True)`` never answers an expired value. Entries past
    ``ttl + stale`` are dropped (a study viewed once is not held for good)."""

    def __init__(self, ttl: float, stale: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.stale = stale
        self.clock = clock
        self._entries: dict[str, _Entry[T]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._renewing: dict[str, asyncio.Task[None]] = {}

    def peek(self, key: str) -> T | None:
        """The value held for ``key``, however old; None when there is none."""
        entry = self._entries.get(key)
        return entry.value if entry is not None else None

    async def get(self, key: str, fetch: Callable[[], Awaitable[T]], fresh: bool = False) -> T:
        entry = self._entries.get(key)
        if entry is not None:
            age = self.clock() - entry.at
            if age < self.ttl:
                return entry.value
            if not fresh and age < self.ttl + self.stale:
                self._renew(key, fetch)
                return entry.value
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                entry = self._entries.get(key)
                if entry is not None and self.clock() - entry.at < self.ttl:
                    return entry.value
                return await self._fetch(key, fetch)
        finally:
            # A failed fetch (an unknown study id, say) keeps no lock: ids from URLs must
            # not grow the cache.
            if key not in self._entries and not lock.locked() and self._locks.get(key) is lock:
                del self._locks[key]

    async def _fetch(self, key: str, fetch: Callable[[], Awaitable[T]]) -> T:
        """Fetch and keep ``key``'s value (its lock held)."""
        value = await fetch()
        now = self.clock()
        for old in [k for k, e in self._entries.items() if now - e.at >= self.ttl + self.stale]:
            del self._entries[old]
            if not self._locks[old].locked():
                del self._locks[old]
        self._entries[key] = _Entry(value, now)
        return value

    def _renew(self, key: str, fetch: Callable[[], Awaitable[T]]) -> None:
        lock = self._locks.setdefault(key, asyncio.Lock())
        if lock.locked() or key in self._renewing:
            return  # a fetch of it is under way

        async def renew() -> None:
            try:
                async with lock:
                    await self._fetch(key, fetch)
            except Exception as exc:  # noqa: BLE001 - the next get fetches again
                log.warning("renewing %s failed: %s", key, exc)
            finally:
                self._renewing.pop(key, None)

        self._renewing[key] = asyncio.ensure_future(renew())


class LineageSource:
    def __init__(self, addr: str, timeout: float = CALL_TIMEOUT,
                 interceptors: list[Any] | None = None) -> None:
        self.addr = addr
        self.timeout = timeout
        # TLS and the API token as the environment says (ladder.channels).
        self.channel = channels.aio_channel(addr, Settings.from_env(), CHANNEL_OPTIONS,
                                            interceptors or ())
        self.stub = lineage_pb2_grpc.LineageServiceStub(self.channel)
        self._listings: TtlCache[lineage_pb2.StudyListings] = TtlCache(LISTINGS_TTL)
        self._summaries: TtlCache[lineage_pb2.StudySummary] = TtlCache(SUMMARY_TTL)
        self._studies: TtlCache[StudyData] = TtlCache(STUDY_TTL)
        self._importances: dict[str, tuple[float, int, Importances]] = {}
        self._recommendations: dict[str, tuple[float, int, dict[str, Any]]] = {}
        # Params by trial id per study, kept across reads: they never change, and
        # converting 20,000 protobuf maps is most of the cost of reading a big study.
        self._params: dict[str, dict[str, dict[str, PlainValue]]] = {}

    async def close(self) -> None:
        await self.channel.close()

    async def _call(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self.stub, method)(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as err:
            raise self._error(method, err) from err

    def _error(self, method: str, err: grpc.aio.AioRpcError) -> SourceError:
        code = err.code()
        if code == grpc.StatusCode.NOT_FOUND:
            return SourceError(404, err.details() or "not found")
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return SourceError(502, f"lineage at {self.addr} does not answer {method}: it "
                               "is older than this dashboard; restart it from this version")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return SourceError(503, f"lineage at {self.addr} is unreachable ({code.name}: "
                               f"{err.details()}); is the stack up (`ladder status`)?")
        return SourceError(502, f"lineage {method} failed: {code.name}: {err.details()}")

    async def health(self, timeout: float = 0.5) -> str:
        """Lineage's gRPC health ("SERVING", ...), "UNREACHABLE" when it does not answer."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.aio.AioRpcError:
            return "UNREACHABLE"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def listings(self) -> lineage_pb2.StudyListings:
        return await self._listings.get("", lambda: self._call(
            "ListStudyListings", lineage_pb2.ListStudyListingsRequest()))

    async def study(self, study_id: str) -> study_pb2.Study:
        """The study as lineage recorded it; 404 when lineage knows no such study."""
        for listing in (await self.listings()).studies:
            if listing.study.study_id == study_id:
                return listing.study
        # Created since the listings were read? GetStudySummary answers NOT_FOUND if not.
        await self.summary(study_id)
        fresh = await self._call("ListStudyListings", lineage_pb2.ListStudyListingsRequest())
        for listing in fresh.studies:
            if listing.study.study_id == study_id:
                return listing.study
        raise SourceError(404, f"study {study_id!r} not found")

    async def summary(self, study_id: str) -> lineage_pb2.StudySummary:
        return await self._summaries.get(study_id, lambda: self._call(
            "GetStudySummary", lineage_pb2.GetStudySummaryRequest(study_id=study_id)))

    async def study_data(self, study_id: str) -> StudyData:
        return await self._studies.get(study_id, lambda: self._read_study(study_id))

    async def _read_study(self, study_id: str) -> StudyData:
        answers = await asyncio.gather(
            self.study(study_id),
            self._call("GetStudySummary", lineage_pb2.GetStudySummaryRequest(study_id=study_id)),
            self._call("ListTrials", lineage_pb2.ListTrialsRequest(study_id=study_id)),
            self._call("GetStudyCurves", lineage_pb2.GetStudyCurvesRequest(study_id=study_id)),
            self._call("GetStudyRungs", lineage_pb2.GetStudyRungsRequest(study_id=study_id)),
            return_exceptions=True,
        )
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        study, summary, trials, curves, rungs = answers
        known = self._params.setdefault(study_id, {})
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: StudyData(study, summary, list(trials.trials), curves, rungs, known))

    def importances(self, data: StudyData) -> Importances:
        """The study's importances: refitted when its completed trials changed, at
        most every IMPORTANCE_TTL seconds (blocking: call it off the event loop)."""
        return self._refitted(self._importances, IMPORTANCE_TTL, data, lambda: importances(
            data.trials, data.axes, data.maximize))

    def recommendation(self, data: StudyData) -> dict[str, Any]:
        """The study's recommended trial (``ladder.dashboard.study.recommendation``, a GP
        fit): refitted when its completed trials changed, at most every
        RECOMMENDATION_TTL seconds (blocking: call it off the event loop)."""
        return self._refitted(self._recommendations, RECOMMENDATION_TTL, data,
                              lambda: recommendation(data),
                              lambda kept: kept["recommended"] is None)

    @staticmethod
    def _refitted(kept: dict[str, tuple[float, int, Any]], ttl: float, data: StudyData,
                  fit: Callable[[], T], empty: Callable[[T], bool] = lambda _: False) -> T:
        """``fit()`` again when the study's completed trials changed, at most every
        ``ttl`` seconds (a model fit per read of a live study would be most of the
        dashboard's CPU), or at once when what was kept is ``empty``: a study's first
        completed trials are shown when they come, not a ``ttl`` later."""
        study_id = data.study.study_id
        completed = sum(t.has_value for t in data.trials)
        previous = kept.get(study_id)
        now = time.monotonic()
        if previous is not None and (previous[1] == completed or (
                now - previous[0] < ttl and not empty(previous[2]))):
            return previous[2]
        found = fit()
        kept[study_id] = (now, completed, found)
        return found

    async def trial(self, trial_id: str) -> lineage_pb2.TrialLineage:
        return await self._call(
            "GetTrialLineage", lineage_pb2.GetTrialLineageRequest(trial_id=trial_id))
