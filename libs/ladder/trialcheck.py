"""Whether a metric report may move early stopping: its trial must exist, belong to
the study the report names, and be in a state in which its reports arrive.

Metrics are the one topic anyone may publish to (other teams' services do, with plain
Kafka clients), so they are not signed (``ladder.signing``); a report for a trial id
nobody created ("phantom" trials reporting good values) would otherwise take places
on the rung leaderboards and push real trials out of their rung.

The trial store in Redis (owned by evaluate, ``ladder.state.trials``) is the truth:
StartTrial makes a trial RUNNING there before the worker is told to train, so a
valid report can never precede its trial's state (reading the trials topic instead
would race the report against the trial's own RUNNING event). States:

- RUNNING: accepted;
- PAUSED, RESUMABLE: accepted: reports of the attempt that just checkpointed to
  pause, or whose lease just expired, are still in flight, and they are true;
- COMPLETED, PRUNED, FAILED: accepted: a worker's last reports race its Complete, or
  the STOP its heartbeat just got, so early-stop can read them after the trial ended;
  they are true, and every rung crossing the metrics topic implies gets its decision
  (bench/chaos.py checks that none is lost);
- SUGGESTED: "trial not running": no worker has started it, no report can be true;
- no trial: "unknown trial"; another study: "trial belongs to another study".

``TrialCheck`` keeps an accepted trial for good: its study never changes and none of
the accepted states leads back to SUGGESTED (only CREATE_TRIALS writes it) or to no
trial (trial hashes are never deleted), so once accepted its reports stay accepted.
An unknown trial is read again after ``ttl_s``, a SUGGESTED one at once (StartTrial
may run any moment). A trial so costs one Redis read in its life, not one per
``ttl_s``: re-reading every running trial every 2 s was most of early-stop's Redis
traffic at fleet rates (1,000 workers reporting every second, bench/README.md).
Stage 1 reads the trials of a whole batch in one pipelined round trip
(``prefetch``, by the records' keys: the metrics topic is keyed by trial id), not
one per trial.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from ladder.v1 import trial_pb2

ACCEPT = "accept"
FINISHED_STATES = frozenset({trial_pb2.COMPLETED, trial_pb2.PRUNED, trial_pb2.FAILED})
REPORTING_STATES = frozenset({trial_pb2.RUNNING, trial_pb2.PAUSED, trial_pb2.RESUMABLE})
# States whose reports count: those whose attempt is, or just was, running.
ACCEPTED_STATES = REPORTING_STATES | FINISHED_STATES
# How long "no such trial" is trusted before the trial is read again.
TTL_S = 2.0
# Most trials remembered; past it the memory starts over (a flood of phantom ids must
# not grow it without bound).
CACHE_MAX = 200_000


@dataclass(frozen=True)
class Known:
    """A trial's study and state as the store holds them (None: no such trial)."""

    study_id: str
    state: int


def verdict(report_study: str, trial_id: str, known: Known | None) -> str:
    """``ACCEPT`` or the reason to dead-letter a report of ``trial_id`` that names
    ``report_study``."""
    if known is None:
        return f"unknown trial {trial_id!r}: no such trial in the trial store"
    if known.study_id != report_study:
        return (
            f"trial belongs to another study: trial {trial_id!r} is not in study "
            f"{report_study!r}"
        )
    if known.state in ACCEPTED_STATES:
        return ACCEPT
    values = trial_pb2.TrialState.values()
    name = trial_pb2.TrialState.Name(known.state) if known.state in values else str(known.state)
    return f"trial not running: trial {trial_id!r} is {name}"


# The trials' study and state, in the order asked (None: no such trial).
Lookup = Callable[[Sequence[str]], Awaitable[Sequence[Known | None]]]


class TrialCheck:
    """``verdict`` on the trial store's view: an accepted trial remembered for good,
    an unknown one for ``ttl_s``."""

    def __init__(
        self,
        lookup: Lookup,
        ttl_s: float = TTL_S,
        clock: Callable[[], float] = time.monotonic,
        cache_max: int = CACHE_MAX,
    ) -> None:
        self.lookup = lookup
        self.ttl_s = ttl_s
        self.clock = clock
        self.cache_max = cache_max
        self._seen: dict[str, tuple[Known | None, float]] = {}
        self.reads = 0

    async def __call__(self, study_id: str, trial_id: str) -> str:
        seen = self._seen.get(trial_id)
        if seen is None or seen[1] <= self.clock():
            await self._read([trial_id])
            seen = self._seen[trial_id]
        return verdict(study_id, trial_id, seen[0])

    async def prefetch(self, trial_ids: Iterable[str]) -> None:
        """Read, in one round trip, those of ``trial_ids`` not known or known too long."""
        now = self.clock()
        due = [
            t for t in dict.fromkeys(trial_ids)
            if (seen := self._seen.get(t)) is None or seen[1] <= now
        ]
        if due:
            await self._read(due)

    async def _read(self, trial_ids: Sequence[str]) -> None:
        found = await self.lookup(trial_ids)
        self.reads += 1
        now = self.clock()
        if len(self._seen) + len(trial_ids) > self.cache_max:
            self._seen.clear()
        for trial_id, known in zip(trial_ids, found, strict=True):
            self._seen[trial_id] = (known, now + self._keep_for(known))

    def _keep_for(self, known: Known | None) -> float:
        if known is None:
            return self.ttl_s
        if known.state in ACCEPTED_STATES:
            return float("inf")  # final (module docstring)
        return 0.0  # SUGGESTED: StartTrial may make it RUNNING any moment


def redis_lookup(redis_url: str, trial_key: Callable[[str], str]) -> Lookup:
    """A ``Lookup`` reading the trial hash (fields ``study``, ``state``) with
    redis.asyncio, so the stream processor's event loop is never blocked."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)

    async def lookup(trial_ids: Sequence[str]) -> list[Known | None]:
        pipe = client.pipeline(transaction=False)
        for trial_id in trial_ids:
            pipe.hmget(trial_key(trial_id), ["study", "state"])
        return [
            Known(study.decode(), int(state or 0)) if study else None
            for study, state in await pipe.execute()
        ]

    return lookup
