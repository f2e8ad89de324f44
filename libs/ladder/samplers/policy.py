"""The suggestion policy of one (study, partition): what surrounds the algorithm.

A ``Sampler`` is pure (observations in, proposals out). ``SuggestionPolicy`` is
the one object the suggest service holds per (study, partition) around it:

* the observations: one ``ObservationStore`` per study, shared by the study's
  partitions (the only copy in the service process);
* a ready buffer of proposals and the refit loop (one thread) that keeps it
  full by calling the ``Refit``: the sampler in this process (``LocalRefit``)
  or in the suggest service's refit processes;
* the fallbacks that answer a miss at once: a ``model_fallback`` (TPE, which
  answers in milliseconds) once it can fit, the quasi-random ``fallback`` before.

Model-based samplers (GP, TPE) need from tens of milliseconds to seconds per
call, growing with the number of observations, so ``take`` never calls the
study's sampler: it pops points the refit loop computed earlier. A policy without
a ``Refit`` (a quasi-random study) serves every request from its ``fallback``
directly, under the fallback's own name: that sampler answers in microseconds.

Stale while revalidate. New observations do not throw the buffer away: its points
are still the model's choices, made a few observations ago, and a fleet reports
faster than any refit lands, so a buffer cleared on every observation is always
empty. The buffer keeps serving until the refit that includes the new
observations lands, and that refit's batch replaces what is left of it (counted
in ``stats.dropped``; their draw indices are simply never used). Every buffered
point carries its model's provenance (``Proposal.model_observations``,
``study_observations``, ``fitted_unix``): ``staleness`` says, at hand-out time, how
many observations the study has that its model had not seen and how many seconds
ago its refit began.

Buffer sized to the requests. A batch must serve every request until the next
batch lands, so a refit asks for the most points taken within one refit cycle (the
pending read, waiting for a refit process and the fit, to the landing; an estimate
that decays from the longest recent cycle) over the last ``sizing.PEAK_WINDOW``
seconds, times ``sizing.HEADROOM``: requests come in bursts (``sizing.py``). It is
bounded by ``capacity`` (the least) and ``max_capacity`` (the most; equal by default:
a fixed size). The sampler must make a large batch cheaply: the GP switches to
Thompson sampling above a few points (gp.py, "Large batches"), TPE to one pool of
candidates above 16 (tpe.py).

Refit loop (the only caller of the ``Refit``, so a sampler needs no locking):

* It wakes when the study's observations change or the buffer runs low (at
  most ``low_water`` points left after a ``take``; by default half the current
  target size).
* After new observations it asks for a fresh batch of the target size, which
  replaces the buffer when it lands (above).
* Without new observations it tops the buffer up to the target size; the points
  still buffered are passed as pending next to the caller's pending points, so
  the new ones do not duplicate them.
* A failing refit is logged and retried after ``RETRY_SECONDS`` (or on the next
  observation); the loop never dies while the policy is running.

Shared buffers (``ready.py``). With several suggest replicas the buffer of a
(study, partition) lives in Redis: every replica takes from it, and only the
replica owning the partition runs refits (its loop idles otherwise). The owner does
not see the other replicas' takes, so it polls the buffer every
``SHARED_POLL_SECONDS`` for its fill level and the points asked of it (the take
rate); gaining a partition makes its buffer stale, so the new owner's first refit
replaces what the previous owner left.

Warm fallback. A TPE fit costs 10-30 ms, too much for the request path at fleet rates
with many misses (and the misses were serialised). Once TPE can fit, a second thread
keeps a small buffer of TPE points ready (``WARM_MIN`` to ``WARM_MAX``: twice the points
popped since its last fill), fitted with the buffered, recently handed out and warm
points as pending, in batches large enough for TPE's pooled path (a third of the cost
per point); a miss pops them (waiting for a fill under way rather than fitting behind
it), and fits on the request path only what the warm buffer lacks. It refills once
half of it is gone; after new observations its points keep serving (stale while
revalidate, as the ready buffer) and the next fill replaces them. Each warm point is
stamped with the observations and time of its fit, so its staleness is as honest as a
model point's.

Provenance: every proposal names what chose it (``Proposal.algorithm``); a miss
is answered under ``MODEL_FALLBACK_ALGORITHM`` ("tpe-fallback") when the model
fallback could fit, else under ``FALLBACK_ALGORITHM`` ("sobol-fallback"), so it
is visible per suggestion. The model fallback sees the study's observations and,
as pending, the last ``FALLBACK_PENDING`` points this policy handed out (its
constant liar spreads consecutive misses; reading every running trial from Redis
per miss would cost more than the answer).

No wasted evaluations (``distinct.py``), on a space whose configurations can
repeat: the refit gets the buffered points as pending (above); the fallbacks get
the study's observations and every point pending, buffered or recently handed out
(misses are serialised, so two concurrent misses see each other's points; the
pending read is a Redis read on that path); and a refit's points whose
configuration was handed out while it ran (a stale buffer keeps serving during a
refit, and a point handed out reaches the pending set a moment later) are dropped
when it lands, the next top-up replacing them. "Recently" is the last
``HANDED_WINDOW`` points (at least four of the largest buffers) this policy
handed out, which covers what was handed out during any refit short of a burst of
that many misses.
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
from ladder.samplers.model_based import ModelBasedSampler
from ladder.samplers.ready import LocalBuffer, ReadyBuffer
from ladder.samplers.sizing import TakeLog, batch_size, next_estimate
from ladder.samplers.tpe import POINT_BY_POINT_MAX

log = logging.getLogger("ladder.samplers.policy")

FALLBACK_ALGORITHM = "sobol-fallback"
MODEL_FALLBACK_ALGORITHM = "tpe-fallback"
RETRY_SECONDS = 1.0
# Points handed out that stay "in flight" for this policy (module docstring).
HANDED_WINDOW = 256
# Of which the model fallback sees the last FALLBACK_PENDING as pending.
FALLBACK_PENDING = 64
# A shared buffer (ready.py) is emptied by other processes too: its owner's refit loop
# looks at its fill level and request count this often.
SHARED_POLL_SECONDS = 0.25
# The warm fallback buffer (module docstring): its least and most points.
WARM_MIN = 32
WARM_MAX = 128
# A fill asks for at least this many: TPE makes a batch above POINT_BY_POINT_MAX from
# one pool, about a third of the cost per point (5.5 against 15-19 ms at 300 obs, 6-d).
WARM_BATCH_MIN = POINT_BY_POINT_MAX + 1
# A miss that finds the warm buffer empty while it is being filled waits this long at
# most for the fill (it holds the fallback lock a request-path fit would wait for).
WARM_WAIT_SECONDS = 1.0

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
    model_fallbacks: int = 0  # of the misses, answered by the model fallback
    refits: int = 0
    failed_refits: int = 0
    dropped: int = 0
    observations: int = 0  # what the study had observed at the last refit
    infeasible: int = 0  # of which infeasible (failed trials the samplers learn from)
    buffered: int = 0
    target: int = 0  # the batch size the last refit asked for (module docstring)
    take_rate: float = 0.0  # points taken per second when the last refit began
    busiest: int = 0  # the most points taken within one cycle, when it began
    last_refit_seconds: float = 0.0  # the sampler's call (waiting for a process included)
    last_cycle_seconds: float = 0.0  # from the pending read to the landing
    pending_seconds: float = 0.0  # of which reading the pending points
    cycle_estimate: float = 0.0  # the expected cycle (module docstring)
    refit_seconds_total: float = 0.0
    warm: int = 0  # warm fallback points ready (module docstring)


def staleness(proposal: Proposal, observed: int, now: float | None = None) -> tuple[int, float]:
    """How stale the model behind ``proposal`` is when handed out, the study having
    ``observed`` observations: (observations its model had not seen, seconds since
    its refit began); (0, 0.0) for a point no policy stamped (module docstring)."""
    if not proposal.fitted_unix:
        return 0, 0.0
    now = time.time() if now is None else now
    return (
        max(0, observed - proposal.study_observations),
        max(0.0, now - proposal.fitted_unix),
    )


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
        max_capacity: int | None = None,
        model_fallback: ModelBasedSampler | None = None,
        ready: ReadyBuffer | None = None,
        warm_fallback: bool = True,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 (got {capacity})")
        if max_capacity is not None and max_capacity < capacity:
            raise ValueError(f"max_capacity must be >= capacity (got {max_capacity} < {capacity})")
        self.observations = observations
        self.fallback = fallback
        self.model_fallback = model_fallback
        # False: every miss fits the model fallback on the request path (for comparison).
        self.warm_fallback = warm_fallback
        self.refit = refit
        self.capacity = capacity
        self.max_capacity = capacity if max_capacity is None else max_capacity
        # Default: refill once half the buffer is gone, so a burst of requests
        # finds points while the top-up runs.
        self._low_water = low_water
        self.pending = pending
        self.name = name
        self._ready: ReadyBuffer = LocalBuffer() if ready is None else ready
        # Points asked of a shared buffer (all processes) when its owner last polled;
        # None while this process does not own it.
        self._asked_seen: int | None = None
        self._handed: deque[Mapping[str, PlainValue]] = deque(
            maxlen=max(HANDED_WINDOW, 4 * self.max_capacity)
        )
        self._takes = TakeLog()
        self._target = capacity
        # Whether the no-repeat rule applies: the space can repeat a configuration
        # and the study wants no repeats (distinct.py).
        self._distinct = Taken(fallback.space, fallback.context.repeats).active
        self._fallback_lock = threading.Lock()
        self._stale = False
        self._wake = threading.Condition()
        self._stopping = False
        self._stats = PolicyStats(target=capacity)
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._run, name=f"refit-{name}", daemon=True)
        # The warm fallback (module docstring): its points, guarded by ``_warm_cv``.
        self._warm: deque[Proposal] = deque()
        self._warm_cv = threading.Condition()
        self._warm_stale = False  # observations came since its points were fitted
        self._warm_idle = False  # TPE could not fit: wait for observations
        self._warm_popped = 0  # points popped since the last fill
        self._warm_filling = False  # a fill is under way
        self._warm_target = WARM_MIN
        self._warm_thread = threading.Thread(
            target=self._keep_warm, name=f"warm-{name}", daemon=True
        )

    @property
    def low_water(self) -> int:
        return self._target // 2 if self._low_water is None else self._low_water

    # ---------------------------------------------------------------- callers

    def start(self) -> SuggestionPolicy:
        """Start the refit loop (nothing to start without a ``refit``)."""
        if self.refit is not None:
            self.observations.subscribe(self._observed)
            self._thread.start()
            if self.model_fallback is not None and self.warm_fallback:
                self._warm_thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the refit loop; True if the thread ended within ``timeout`` (a
        refit in progress cannot be interrupted; the thread is a daemon)."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        with self._warm_cv:
            self._warm_cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._warm_thread.is_alive():
            self._warm_thread.join(timeout)
        return not self._thread.is_alive() and not self._warm_thread.is_alive()

    def take(self, count: int) -> list[Proposal]:
        """``count`` points: buffered ones first, the rest from the fallbacks."""
        if count <= 0:
            return []
        if self.refit is None:
            return self._from_fallback(count)
        shared = self._ready.shared
        if shared:  # atomic in Redis: taken without the lock the refit thread shares
            ready, left = self._ready.take(count)
        with self._wake:
            if not shared:  # a shared buffer's owner polls the rate instead
                self._count_take(count)
                ready, left = self._ready.take(count)
            self._handed.extend(p.params for p in ready)
            self._stats = replace(
                self._stats,
                hits=self._stats.hits + len(ready),
                misses=self._stats.misses + count - len(ready),
                buffered=left,
            )
            if left <= self.low_water:
                self._wake.notify_all()
        if len(ready) < count:
            ready.extend(self._miss(count - len(ready)))
        return ready

    def staleness(self, proposal: Proposal) -> tuple[int, float]:
        """``staleness`` of a point this policy handed out, against its study now."""
        return staleness(proposal, len(self.observations))

    def _count_take(self, count: int) -> None:
        """Record ``count`` points taken now (for the sizing). Holding ``_wake``."""
        self._takes.record(time.monotonic(), count)

    def take_rate(self) -> float:
        """Points taken per second over the last ``sizing.RATE_WINDOW`` seconds."""
        with self._wake:
            return self._takes.rate(time.monotonic())

    def _target_capacity(self) -> tuple[int, int]:
        """The batch a refit asks for now (module docstring) and the most points
        taken within one cycle it is sized to. Holding ``_wake``."""
        busiest = self._takes.busiest(time.monotonic(), self._stats.cycle_estimate)
        if self.max_capacity == self.capacity:
            return self.capacity, busiest
        return batch_size(busiest, self.capacity, self.max_capacity), busiest

    def _miss(self, count: int) -> list[Proposal]:
        """A miss of a model-based policy: the model fallback's points once it can
        fit, else the quasi-random fallback's (module docstring, "Provenance")."""
        proposals = self._from_model_fallback(count) if self.model_fallback is not None else []
        if len(proposals) < count:
            proposals.extend(
                replace(p, algorithm=FALLBACK_ALGORITHM)
                for p in self._from_fallback(count - len(proposals))
            )
        return proposals

    def _from_model_fallback(self, count: int) -> list[Proposal]:
        """``count`` points of the model fallback: the warm ones first, the rest fitted
        now; [] while it cannot fit (its own quasi-random start would answer: the
        caller's job)."""
        proposals = self._pop_warm(count)
        if len(proposals) < count and self._await_warm_fill():
            # The fill under way holds the fallback lock: its points, not a second fit.
            proposals.extend(self._pop_warm(count - len(proposals)))
        if len(proposals) < count:
            with self._fallback_lock:
                proposals.extend(self._fit_model_fallback(count - len(proposals)))
        with self._wake:
            self._handed.extend(p.params for p in proposals)
            self._stats = replace(
                self._stats, model_fallbacks=self._stats.model_fallbacks + len(proposals)
            )
        return proposals

    def _await_warm_fill(self) -> bool:
        """Wait (at most ``WARM_WAIT_SECONDS``) for a fill under way; whether one was."""
        with self._warm_cv:
            if not self._warm_filling:
                return False
            self._warm_cv.wait_for(lambda: not self._warm_filling, WARM_WAIT_SECONDS)
            return True

    def _pop_warm(self, count: int) -> list[Proposal]:
        """Up to ``count`` warm points (module docstring), without any whose
        configuration is taken meanwhile (distinct spaces)."""
        with self._warm_cv:
            popped = [self._warm.popleft() for _ in range(min(count, len(self._warm)))]
            self._warm_popped += len(popped)
            if len(self._warm) <= self._warm_target // 2:
                self._warm_cv.notify_all()
        if popped and self._distinct:
            with self._wake:
                in_flight = self._in_flight(list(self.pending()))
            taken = Taken.of(self.fallback.space, self.observations.snapshot(), in_flight)
            popped = [p for p in popped if not taken.blocks(p.params)]
        return popped

    def _fit_model_fallback(
        self, count: int, also_pending: Sequence[Mapping[str, PlainValue]] = ()
    ) -> list[Proposal]:
        """``count`` points of the model fallback, stamped as fitted now, with
        ``also_pending`` as pending too; [] while it cannot fit. Not recorded as
        handed out (the caller's job)."""
        assert self.model_fallback is not None
        observations = self.observations.snapshot()
        # Whether it can fit depends on the observations alone: decided before the
        # pending read (a Redis round trip on the request path) it would not need.
        training = self.model_fallback.training_set(observations)
        if not self.model_fallback.can_fit(training, ()):
            return []
        pending = list(self.pending()) if self._distinct else []
        with self._wake:
            if self._distinct:
                in_flight = self._in_flight(pending)
            else:
                recent = min(FALLBACK_PENDING, len(self._handed))
                in_flight = [self._handed[-1 - i] for i in range(recent)]
        in_flight.extend(also_pending)
        proposals = self.model_fallback.suggest(observations, count, in_flight)
        now = time.time()
        return [
            replace(
                p,
                algorithm=MODEL_FALLBACK_ALGORITHM,
                study_observations=len(observations),
                fitted_unix=now,
            )
            for p in proposals
        ]

    def _from_fallback(self, count: int) -> list[Proposal]:
        """``count`` points of the fallback, none of them a configuration observed,
        pending, buffered or recently handed out (module docstring)."""
        if not self._distinct:
            return self.fallback.suggest((), count)
        observations = self.observations.snapshot()
        pending = list(self.pending())
        with self._fallback_lock:
            with self._wake:
                in_flight = self._in_flight(pending)
            proposals = self.fallback.suggest(observations, count, in_flight)
            with self._wake:
                self._handed.extend(p.params for p in proposals)
        return proposals

    def _in_flight(self, pending: Pending) -> list[Mapping[str, PlainValue]]:
        """Every point pending, buffered or recently handed out. Holding ``_wake``."""
        return [*pending, *(p.params for p in self._ready.proposals()), *self._handed]

    @property
    def stats(self) -> PolicyStats:
        with self._warm_cv:
            warm = len(self._warm)
        with self._wake:
            return replace(self._stats, warm=warm)

    # ------------------------------------------------------------- refit loop

    def _observed(self) -> None:
        with self._wake:
            self._stale = True
            self._retry_at = 0.0
            self._wake.notify_all()
        with self._warm_cv:
            self._warm_stale = True
            self._warm_idle = False
            self._warm_cv.notify_all()

    def _keep_warm(self) -> None:
        """The warm fallback's thread (module docstring): refill once half is gone."""
        while True:
            with self._warm_cv:
                while not self._stopping and (
                    self._warm_idle or len(self._warm) > self._warm_target // 2
                ):
                    self._warm_cv.wait()
                if self._stopping:
                    return
                stale, self._warm_stale = self._warm_stale, False
                keep = [] if stale else list(self._warm)
                self._warm_target = target = min(
                    WARM_MAX, max(WARM_MIN, 2 * self._warm_popped)
                )
                self._warm_popped = 0
                self._warm_filling = True
            try:
                # Serialised with the request path's fits: the sampler is not reentrant.
                with self._fallback_lock:
                    fresh = self._fit_model_fallback(
                        max(WARM_BATCH_MIN, target - len(keep)), [p.params for p in keep]
                    )
            except Exception:  # noqa: BLE001 - a miss fits on the request path meanwhile
                log.exception("warm fallback fill failed", extra={"buffer": self.name})
                fresh = []
            with self._warm_cv:
                if stale:  # what is left predates the observations: replaced
                    self._warm.clear()
                self._warm.extend(fresh)
                self._warm_filling = False
                self._warm_cv.notify_all()
                if not fresh:  # cannot fit (yet), or failed: wait for observations
                    self._warm_idle = True

    def _wait_for_work(self) -> bool:
        """Block (holding ``_wake``) until there is work; False when stopping."""
        while not self._stopping:
            now = time.monotonic()
            if self._retry_at > now:  # backing off after a failed or empty refit
                self._wake.wait(self._retry_at - now)
                continue
            self._retry_at = 0.0
            if not self._ready.shared:
                if self._stale or self._ready.size() <= self.low_water:
                    return True
                self._wake.wait()
                continue
            size = self._poll_shared()
            if size is not None and (self._stale or size <= self.low_water):
                return True
            self._wake.wait(SHARED_POLL_SECONDS)
        return False

    def _poll_shared(self) -> int | None:
        """A shared buffer's size, its requests since the last poll counted as takes;
        None when this process does not own it (another process refits). Gaining it
        makes the buffer stale: the new owner's first refit replaces what is there.
        Holding ``_wake``."""
        try:
            owned = self._ready.owned()
            size, asked = self._ready.poll() if owned else (0, 0)
        except Exception:  # noqa: BLE001 - Redis away: poll again, the loop lives on
            log.warning("shared buffer poll failed", exc_info=True, extra={"buffer": self.name})
            owned = False
        if not owned:
            self._asked_seen = None
            return None
        if self._asked_seen is None:
            self._stale = True
        elif asked > self._asked_seen:
            self._count_take(asked - self._asked_seen)
        self._asked_seen = asked
        return size

    def _run(self) -> None:
        while True:
            with self._wake:
                if not self._wait_for_work():
                    return
                stale, self._stale = self._stale, False
                # A stale buffer keeps serving; the refit's batch replaces it.
                keep = [] if stale else self._ready.proposals()
                target, busiest = self._target_capacity()
                self._target = target
                rate = self._takes.rate(time.monotonic())
            try:
                self._refit(stale, keep, target, rate, busiest)
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

    def _refit(
        self, stale: bool, keep: list[Proposal], target: int, rate: float, busiest: int
    ) -> None:
        assert self.refit is not None
        want = target - len(keep)
        if want <= 0:
            return
        cycle_began = time.perf_counter()
        pending = [*self.pending(), *(p.params for p in keep)]
        basis, began = len(self.observations), time.time()
        started = time.perf_counter()
        pending_seconds = started - cycle_began
        proposals = [
            replace(p, study_observations=basis, fitted_unix=began)
            for p in self.refit(want, pending)
        ]
        seconds = time.perf_counter() - started
        observed = len(self.observations)
        infeasible = self.observations.infeasible
        with self._wake:
            proposals = self._not_handed(proposals, pending)
            # New observations (stale): what is left of the buffer predates them.
            dropped = self._ready.size() if stale else 0
            buffered = self._ready.fill(proposals, replace=stale)
            if buffered < 0:  # a shared buffer whose lease this process lost
                dropped, buffered, proposals = 0, 0, []
            cycle = time.perf_counter() - cycle_began
            first = self._stats.refits == 0
            self._stats = replace(
                self._stats,
                refits=self._stats.refits + 1,
                dropped=self._stats.dropped + dropped,
                observations=observed,
                infeasible=infeasible,
                buffered=buffered,
                target=target,
                take_rate=rate,
                busiest=busiest,
                last_refit_seconds=seconds,
                last_cycle_seconds=cycle,
                pending_seconds=pending_seconds,
                cycle_estimate=next_estimate(cycle, self._stats.cycle_estimate),
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
            "%d infeasible observations, target %d at %.1f points/s, at most %d taken "
            "within a cycle; cycle %.3f s, of which the pending read %.3f s)",
            self.name,
            observed,
            len(proposals),
            seconds,
            dropped,
            infeasible,
            target,
            rate,
            busiest,
            cycle,
            pending_seconds,
            extra={"buffer": self.name},
        )
