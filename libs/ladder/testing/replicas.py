"""Workers against replicated services, and who owns which suggestion partition: shared
by ``tests/integration/test_suggest_replicas.py`` and ``bench/replicas.py``.

``TrialLoop`` runs ``workers`` threads through the real client (Suggest, StartTrial,
CompleteTrial, over and over) until stopped, and records every suggestion handed out
(trial id, partition, seed, what chose it, the Suggest call's latency as the worker saw
it) and every error a worker saw; a client given a list of replicas must fail over
without surfacing one.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from dataclasses import dataclass, field

import redis

from ladder.client import LadderClient
from ladder.state import Keys
from ladder.state.leases import parse_lease


@dataclass(frozen=True)
class Handed:
    trial_id: str
    partition: int
    seed: int
    algorithm: str
    seconds: float  # the Suggest call as the worker saw it (retries included)
    at: float  # time.monotonic() when it returned
    resumed: bool = False  # a trial handed out again (its claim or lease expired)


@dataclass
class TrialLoop:
    client: LadderClient
    study_id: str
    workers: int
    pace: float = 0.0  # seconds a worker waits after each trial (the load it offers)
    handed: list[Handed] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> TrialLoop:
        for n in range(self.workers):
            thread = threading.Thread(target=self._run, args=(f"rw-{n}",), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def count(self) -> int:
        with self._lock:
            return len(self.handed)

    def _run(self, worker_id: str) -> None:
        while not self._stop.is_set():
            try:
                began = time.monotonic()
                suggestions = self.client.suggest(self.study_id, worker_id, 1)
                ended = time.monotonic()
                for s in suggestions:
                    with self._lock:
                        self.handed.append(Handed(
                            s.trial.trial_id, s.trial.partition, s.trial.seed, s.algorithm,
                            ended - began, ended, s.resumed,
                        ))
                    attempt = uuid.uuid4().hex[:12]
                    self.client.start_trial(s.trial.trial_id, worker_id, attempt)
                    x = s.trial.params["x"].float_value if "x" in s.trial.params else 0.5
                    self.client.complete(s.trial.trial_id, attempt, math.sin(6 * x), 1)
                self._stop.wait(self.pace)
            except Exception as exc:  # noqa: BLE001 - reported to the caller, not lost
                with self._lock:
                    self.errors.append(f"{worker_id}: {exc!r}")
                return


def partition_owners(client: redis.Redis, keys: Keys, study_id: str, partitions: int
                     ) -> list[str | None]:
    """The member owning each partition of ``study_id`` (None: no lease)."""
    raw = client.mget([keys.partition_lease(study_id, p) for p in range(partitions)])
    return [owner[0] if (owner := parse_lease(value)) else None for value in raw]


def duplicates(handed: list[Handed]) -> list[str]:
    """Trial ids handed out more than once, and (partition, seed) pairs (a draw of a
    partition's stream) given to two trials."""
    seen: set[str] = set()
    draws: set[tuple[int, int]] = set()
    out = []
    for h in handed:
        if h.resumed:
            continue
        if h.trial_id in seen:
            out.append(h.trial_id)
        if (h.partition, h.seed) in draws:
            out.append(f"{h.trial_id} (partition {h.partition} seed {h.seed})")
        seen.add(h.trial_id)
        draws.add((h.partition, h.seed))
    return out
