"""The suggestion policy of one (study, partition): what surrounds the algorithm.

A ``Sampler`` is pure (observations in, proposals out). ``SuggestionPolicy`` is
the one object the suggest service holds per (study, partition) around it:

* the observations: one ``ObservationStore`` per study, shared by the study's
  partitions (the only copy in the service process);
* a ready buffer of proposals and the refit loop (one thread) that keeps it
  full by calling the ``Refit``: the sampler in this process (``LocalRefit``)
  or in the suggest service's refit process;
* the quasi-random ``fallback`` that answers a miss at once.

Model-based samplers (GP, TPE) need from tens of milliseconds to seconds per
call, growing with the number of observations, so ``take`` never calls them: it
pops points the refit loop computed earlier. A policy without a ``Refit`` (a
quasi-random study) serves every request from its ``fallback`` directly, under
the fallback's own name: that sampler answers in microseconds.

Refit loop (the only caller of the ``Refit``, so a sampler needs no locking):

* It wakes when the study's observations change or the buffer runs low (at
  most ``low_water`` points left after a ``take``).
* New observations make every buffered point stale: the loop asks for a fresh
  joint batch of ``capacity`` points and replaces the buffer with it (the
  dropped points are counted in ``stats.dropped``; their draw indices are
  simply never used).
* Without new observations it tops the buffer up to ``capacity``; the points
  still buffered are passed as pending next to the caller's pending points, so
  the new ones do not duplicate them.
* A failing refit is logged and retried after ``RETRY_SECONDS`` (or on the next
  observation); the loop never dies while the policy is running.

Provenance: every proposal names what chose it (``Proposal.algorithm``); a miss
is answered by the fallback under ``FALLBACK_ALGORITHM``, so it is visible per
suggestion.

No wasted evaluations (``distinct.py``), on a space whose configurations can
repeat: the refit gets the buffered points as pending (above); the fallback gets
the study's observations and every point pending, buffered or recently handed out
(misses are serialised, so two concurrent misses see each other's points; the
pending read is a Redis read on that path); and a refit's points whose
configuration was handed out while it ran (a stale buffer keeps serving during a
refit, and a point handed out reaches the pending set a moment later) are dropped
when it lands, the next top-up replacing them. "Recently" is the last
``HANDED_WINDOW`` points (at least four buffers) this policy handed out, which
covers what was handed out during any refit short of a burst of that many misses.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from ladder.failures import FailureKind
from ladder.params import PlainValue
from ladder.samplers.base import Observation, ObservationKey, Pending, Proposal, Sampler
from ladder.samplers.distinct import Taken, config_key

log = logging.getLogger("ladder.samplers.policy")

FALLBACK_ALGORITHM = "sobol-fallback"
RETRY_SECONDS = 1.0
# Points handed out that stay "in flight" for this policy (module docstring).
HANDED_WINDOW = 256

PendingProvider = Callable[[], Pending]
# refit(count, pending) -> ``count`` proposals from the study's current observations.
Refit = Callable[[int, Pending], list[Proposal]]


def _no_pending() -> Pending:
    return ()


class ObservationStore:
    """The observations of one study, at most one per ``Observation.key``.

    A replayed observation (same key and value) changes nothing; a different
    value for a known key replaces the old one. Every change is also appended
    to a change log, so a mirror (the refit process) can be fed only what it
    has not seen (``changes_since``).

    Failed trials are observations too (``Observation.of_failure``), whatever
    their failure kind: the store keeps them all and counts them per kind
    (``failures``); which of them inform the samplers is the samplers' rule
    (``base.INFEASIBLE_KINDS``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[ObservationKey, Observation] = {}
        self._changes: list[Observation] = []
        self._listeners: list[Callable[[], None]] = []
        self._failures: Counter[FailureKind] = Counter()
        self._infeasible = 0

    def add(self, observations: Sequence[Observation]) -> int:
        """Record ``observations``; returns how many were new or changed."""
        with self._lock:
            changed = 0
            for obs in observations:
                old = self._by_key.get(obs.key)
                if old != obs:
                    if old is not None:
                        self._count(old, -1)
                    self._count(obs, 1)
                    self._by_key[obs.key] = obs
                    self._changes.append(obs)
                    changed += 1
            listeners = list(self._listeners) if changed else []
        for listener in listeners:
            listener()
        return changed

    def _count(self, obs: Observation, sign: int) -> None:
        if obs.failure is not None:
            self._failures[obs.failure] += sign
            self._infeasible += sign * obs.infeasible

    def failures(self) -> dict[FailureKind, int]:
        """How many failed trials the study has, by failure kind."""
        with self._lock:
            return {kind: n for kind, n in self._failures.items() if n}

    @property
    def infeasible(self) -> int:
        """How many of them are infeasible observations (they inform the samplers)."""
        with self._lock:
            return self._infeasible

    def snapshot(self) -> list[Observation]:
        with self._lock:
            return list(self._by_key.values())

    def changes_since(self, cursor: int) -> tuple[list[Observation], int]:
        """The changes after the first ``cursor`` ones, and the new cursor."""
        with self._lock:
            return self._changes[cursor:], len(self._changes)

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (outside the store's lock) after every change."""
        with self._lock:
            self._listeners.append(listener)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_key)


class LocalRefit:
    """A ``Refit`` in this process. The sampler is built on the first call, i.e.
    on the refit thread, so building it (GP imports torch: seconds) never delays
    a request."""

    def __init__(self, build: Callable[[], Sampler], observations: ObservationStore) -> None:
        self._build = build
        self._observations = observations
        self._sampler: Sampler | None = None

    def __call__(self, count: int, pending: Pending) -> list[Proposal]:
        if self._sampler is None:
            self._sampler = self._build()
        return self._sampler.suggest(self._observations.snapshot(), count, pending)


@dataclass(frozen=True)
class PolicyStats:
    hits: int = 0
    misses: int = 0
    refits: int = 0
    failed_refits: int = 0
    dropped: int = 0
    observations: int = 0  # what the study had observed at the last refit
    infeasible: int = 0  # of which infeasible (failed trials the samplers learn from)
    buffered: int = 0
    last_refit_seconds: float = 0.0
    refit_seconds_total: float = 0.0


class SuggestionPolicy:
    """Suggestions of one (study, partition); see the module docstring."""

    def __init__(
        self,
        observations: ObservationStore,
        fallback: Sampler,
        refit: Refit | None = None,
        capacity: int = 8,
        pending: PendingProvider = _no_pending,
        low_water: int | None = None,
        name: str = "",
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 (got {capacity})")
        self.observations = observations
        self.fallback = fallback
        self.refit = refit
        self.capacity = capacity
        # Default: refill once half the buffer is gone, so a burst of requests
        # finds points while the top-up runs.
        self.low_water = capacity // 2 if low_water is None else low_water
        self.pending = pending
        self.name = name
        self._ready: deque[Proposal] = deque()
        self._handed: deque[Mapping[str, PlainValue]] = deque(
            maxlen=max(HANDED_WINDOW, 4 * capacity)
        )
        # Whether the no-repeat rule applies: the space can repeat a configuration
        # and the study wants no repeats (distinct.py).
        self._distinct = Taken(fallback.space, fallback.context.repeats).active
        self._fallback_lock = threading.Lock()
        self._stale = False
        self._wake = threading.Condition()
        self._stopping = False
        self._stats = PolicyStats()
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._run, name=f"refit-{name}", daemon=True)

    # ---------------------------------------------------------------- callers

    def start(self) -> SuggestionPolicy:
        """Start the refit loop (nothing to start without a ``refit``)."""
        if self.refit is not None:
            self.observations.subscribe(self._observed)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the refit loop; True if the thread ended within ``timeout`` (a
        refit in progress cannot be interrupted; the thread is a daemon)."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def take(self, count: int) -> list[Proposal]:
        """``count`` points: buffered ones first, the rest from the fallback."""
        if count <= 0:
            return []
        if self.refit is None:
            return self._from_fallback(count)
        with self._wake:
            ready = [self._ready.popleft() for _ in range(min(count, len(self._ready)))]
            self._handed.extend(p.params for p in ready)
            self._stats = replace(
                self._stats,
                hits=self._stats.hits + len(ready),
                misses=self._stats.misses + count - len(ready),
                buffered=len(self._ready),
            )
            if len(self._ready) <= self.low_water:
                self._wake.notify_all()
        if len(ready) < count:
            ready.extend(
                replace(p, algorithm=FALLBACK_ALGORITHM)
                for p in self._from_fallback(count - len(ready))
            )
        return ready

    def _from_fallback(self, count: int) -> list[Proposal]:
        """``count`` points of the fallback, none of them a configuration observed,
        pending, buffered or recently handed out (module docstring)."""
        if not self._distinct:
            return self.fallback.suggest((), count)
        observations = self.observations.snapshot()
        pending = list(self.pending())
        with self._fallback_lock:
            with self._wake:
                in_flight = [*pending, *(p.params for p in self._ready), *self._handed]
            proposals = self.fallback.suggest(observations, count, in_flight)
            with self._wake:
                self._handed.extend(p.params for p in proposals)
        return proposals

    @property
    def stats(self) -> PolicyStats:
        with self._wake:
            return self._stats

    # ------------------------------------------------------------- refit loop

    def _observed(self) -> None:
        with self._wake:
            self._stale = True
            self._retry_at = 0.0
            self._wake.notify_all()

    def _wait_for_work(self) -> bool:
        """Block (holding ``_wake``) until there is work; False when stopping."""
        while not self._stopping:
            now = time.monotonic()
            if self._retry_at > now:  # backing off after a failed or empty refit
                self._wake.wait(self._retry_at - now)
                continue
            self._retry_at = 0.0
            if self._stale or len(self._ready) <= self.low_water:
                return True
            self._wake.wait()
        return False

    def _run(self) -> None:
        while True:
            with self._wake:
                if not self._wait_for_work():
                    return
                stale, self._stale = self._stale, False
                keep = [] if stale else list(self._ready)
            try:
                self._refit(stale, keep)
            except Exception:  # noqa: BLE001 - the loop must outlive a bad refit
                if self._stopping:  # e.g. the refit process was stopped with us
                    return
                log.exception("refit failed; retrying", extra={"buffer": self.name})
                with self._wake:
                    self._stats = replace(self._stats, failed_refits=self._stats.failed_refits + 1)
                    self._retry_at = time.monotonic() + RETRY_SECONDS
                    # The buffer still predates the observations that made it stale.
                    self._stale = self._stale or stale

    def _not_handed(self, proposals: list[Proposal], pending: Pending) -> list[Proposal]:
        """``proposals`` without those whose configuration was handed out meanwhile
        (module docstring), unless the space is exhausted. Called holding ``_wake``."""
        if not self._distinct or not self._handed:
            return proposals
        space = self.fallback.space
        handed = {config_key(space, params) for params in self._handed}
        if all(config_key(space, p.params) not in handed for p in proposals):
            return proposals
        taken = Taken.of(space, self.observations.snapshot(), [*pending, *self._handed])
        return [p for p in proposals if not taken.blocks(p.params)]

    def _refit(self, stale: bool, keep: list[Proposal]) -> None:
        assert self.refit is not None
        want = self.capacity - len(keep)
        if want <= 0:
            return
        pending = [*self.pending(), *(p.params for p in keep)]
        started = time.perf_counter()
        proposals = self.refit(want, pending)
        seconds = time.perf_counter() - started
        observed = len(self.observations)
        infeasible = self.observations.infeasible
        with self._wake:
            proposals = self._not_handed(proposals, pending)
            dropped = 0
            if stale:  # new observations: what is buffered was computed without them
                dropped = len(self._ready)
                self._ready.clear()
            self._ready.extend(proposals)
            first = self._stats.refits == 0
            self._stats = replace(
                self._stats,
                refits=self._stats.refits + 1,
                dropped=self._stats.dropped + dropped,
                observations=observed,
                infeasible=infeasible,
                buffered=len(self._ready),
                last_refit_seconds=seconds,
                refit_seconds_total=self._stats.refit_seconds_total + seconds,
            )
            if not proposals:  # nothing to add: do not spin until something changes
                self._retry_at = time.monotonic() + RETRY_SECONDS
        if first and proposals:
            log.info(
                "%s sampler for %s built with %d observations",
                proposals[0].algorithm,
                self.name,
                observed,
                extra={"buffer": self.name},
            )
        log.info(
            "refit %s: %d observations, %d points in %.3f s (%d stale dropped, "
            "%d infeasible observations)",
            self.name,
            observed,
            len(proposals),
            seconds,
            dropped,
            infeasible,
            extra={"buffer": self.name},
        )
