"""A ready buffer of suggestions, refilled by a background refit loop.

Model-based samplers (GP, TPE) need from tens of milliseconds to seconds per
call, growing with the number of observations. ``SuggestionBuffer`` takes that
work off the request path: one background thread owns the sampler, and
``take`` only pops points that thread computed earlier.

Refit loop (one thread per buffer; it is the only caller of the sampler's
``update`` and ``suggest``, so a sampler needs no locking of its own here):

* It wakes when new observations arrive (``update``) or the buffer runs low
  (at most ``low_water`` points left after a ``take``).
* New observations make every buffered point stale: the loop feeds them to the
  sampler, asks for a fresh joint batch of ``capacity`` points and replaces the
  buffer with it (the dropped points are counted in ``stats.dropped``; their
  draw indices are simply never used).
* Without new observations it tops the buffer up to ``capacity``; the points
  still buffered are passed as pending next to the caller's pending points, so
  the new ones do not duplicate them.
* A failing ``suggest`` is logged and retried after ``RETRY_SECONDS`` (or on
  the next observation); the loop never dies while the buffer is running.

``take`` never waits for a refit. On a miss (buffer empty, e.g. before the
first refit finished or when requests outpace refits) the missing points come
from the ``fallback`` sampler (quasi-random, microseconds), reported with the
algorithm name ``FALLBACK_ALGORITHM`` so the miss is visible per suggestion.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from ladder.params import PlainValue
from ladder.samplers.base import Observation, Proposal, Sampler

log = logging.getLogger("ladder.samplers.buffered")

FALLBACK_ALGORITHM = "sobol-fallback"
RETRY_SECONDS = 1.0

PendingProvider = Callable[[], Sequence[Mapping[str, PlainValue]]]


def _no_pending() -> Sequence[Mapping[str, PlainValue]]:
    return ()


@dataclass(frozen=True)
class Served:
    """One point handed out by ``take``: ``hit`` is False for a fallback point."""

    proposal: Proposal
    algorithm: str
    hit: bool


@dataclass(frozen=True)
class BufferStats:
    hits: int = 0
    misses: int = 0
    refits: int = 0
    failed_refits: int = 0
    dropped: int = 0
    observations: int = 0  # what the sampler had seen at the last refit
    buffered: int = 0
    last_refit_seconds: float = 0.0
    refit_seconds_total: float = 0.0


class SuggestionBuffer:
    """Ready suggestions for one (study, partition); see the module docstring."""

    def __init__(
        self,
        model: Sampler | Callable[[], Sampler],
        fallback: Sampler,
        capacity: int,
        pending: PendingProvider = _no_pending,
        low_water: int | None = None,
        name: str = "",
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 (got {capacity})")
        # A factory is called on the refit thread, so building the sampler (GP
        # imports torch: seconds) never delays a request either.
        self.model: Sampler | None = model if isinstance(model, Sampler) else None
        self._factory = None if isinstance(model, Sampler) else model
        self.fallback = fallback
        self.capacity = capacity
        # Default: refill once half the buffer is gone, so a burst of requests
        # finds points while the top-up runs.
        self.low_water = capacity // 2 if low_water is None else low_water
        self.pending = pending
        self.name = name
        self._ready: deque[Proposal] = deque()
        self._incoming: list[Observation] = []
        self._wake = threading.Condition()
        self._stopping = False
        self._stats = BufferStats()
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._run, name=f"refit-{name}", daemon=True)

    @property
    def algorithm(self) -> str:
        """The model's algorithm name ("" until a factory-built model exists)."""
        return self.model.algorithm if self.model is not None else ""

    # ---------------------------------------------------------------- callers

    def start(self) -> SuggestionBuffer:
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

    def update(self, observations: Sequence[Observation]) -> None:
        """Queue observations for the sampler and wake the refit loop."""
        if not observations:
            return
        with self._wake:
            self._incoming.extend(observations)
            self._retry_at = 0.0
            self._wake.notify_all()

    def take(self, count: int) -> list[Served]:
        """``count`` points, buffered ones first, the rest from the fallback."""
        if count <= 0:
            return []
        with self._wake:
            ready = [self._ready.popleft() for _ in range(min(count, len(self._ready)))]
            self._stats = replace(
                self._stats,
                hits=self._stats.hits + len(ready),
                misses=self._stats.misses + count - len(ready),
                buffered=len(self._ready),
            )
            if len(self._ready) <= self.low_water:
                self._wake.notify_all()
        served = [Served(p, self.algorithm, True) for p in ready]
        if len(ready) < count:
            served.extend(
                Served(p, FALLBACK_ALGORITHM, False)
                for p in self.fallback.suggest(count - len(ready))
            )
        return served

    @property
    def stats(self) -> BufferStats:
        with self._wake:
            return self._stats

    # ------------------------------------------------------------- refit loop

    def _wait_for_work(self) -> bool:
        """Block (holding ``_wake``) until there is work; False when stopping."""
        while not self._stopping:
            now = time.monotonic()
            if self._retry_at > now:  # backing off after a failed or empty refit
                self._wake.wait(self._retry_at - now)
                continue
            self._retry_at = 0.0
            if self._incoming or len(self._ready) <= self.low_water:
                return True
            self._wake.wait()
        return False

    def _run(self) -> None:
        while True:
            with self._wake:
                if not self._wait_for_work():
                    return
                batch, self._incoming = self._incoming, []
                keep = [] if batch else list(self._ready)
            try:
                self._refit(batch, keep)
            except Exception:  # noqa: BLE001 - the loop must outlive a bad refit
                if self._stopping:  # e.g. the model's process was stopped with us
                    return
                log.exception("refit failed; retrying", extra={"buffer": self.name})
                with self._wake:
                    self._stats = replace(self._stats, failed_refits=self._stats.failed_refits + 1)
                    self._retry_at = time.monotonic() + RETRY_SECONDS

    def _refit(self, batch: list[Observation], keep: list[Proposal]) -> None:
        if self.model is None:
            self.model = self._factory()  # type: ignore[misc]
        if batch:
            self.model.update(batch)
        want = self.capacity - len(keep)
        if want <= 0:
            return
        pending = [*self.pending(), *(p.params for p in keep)]
        started = time.perf_counter()
        proposals = self.model.suggest(want, pending)
        seconds = time.perf_counter() - started
        with self._wake:
            dropped = 0
            if batch:  # new observations: what is buffered was computed without them
                dropped = len(self._ready)
                self._ready.clear()
            self._ready.extend(proposals)
            observed = len(self.model.observations)
            self._stats = replace(
                self._stats,
                refits=self._stats.refits + 1,
                dropped=self._stats.dropped + dropped,
                observations=observed,
                buffered=len(self._ready),
                last_refit_seconds=seconds,
                refit_seconds_total=self._stats.refit_seconds_total + seconds,
            )
            if not proposals:  # nothing to add: do not spin until something changes
                self._retry_at = time.monotonic() + RETRY_SECONDS
        log.info(
            "refit %s: %d observations, %d points in %.3f s (%d stale dropped)",
            self.name,
            observed,
            len(proposals),
            seconds,
            dropped,
            extra={"buffer": self.name},
        )
