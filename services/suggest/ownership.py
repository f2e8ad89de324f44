"""Owned suggestion partitions (LADDER_SUGGEST_LEASES=1): which (study, partition)
this suggest process fits models for, and the shared ready buffers of all of them.

``PartitionOwnership`` is one thread: every ``LeaseSettings.renew`` seconds it
heartbeats this process as a member, renews the leases it holds (one pipelined round
trip), and rebalances (``ladder.state.leases.rebalance``) over the partitions of the
ACTIVE model-based studies: it takes free partitions up to its fair share and
releases those beyond it. A partition it takes gets its policy built here (so its
refit loop runs even if no request reached this process yet); on SIGTERM it releases
every lease, so the survivors take them at their next scan instead of after a ttl.

``SharedBuffer`` is the policies' ``ReadyBuffer`` over the partition's Redis list:
every replica pops from it; only the owner's refit loop fills it, with its fencing
token (a push after the lease was lost is refused by Redis, and the policy stops
refitting until it owns the partition again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from ladder import lifecycle
from ladder.samplers import Proposal, SuggestionPolicy
from ladder.samplers.ready import decode, encode
from ladder.state import StudyStore
from ladder.state.leases import PartitionKey, PartitionLeases, rebalance
from ladder.study import Algorithm, StudySpec

log = logging.getLogger("ladder.suggest.ownership")

# policy_of(study id, spec, partition): the pool's policy (built on first use).
PolicyOf = Callable[[str, StudySpec, int], SuggestionPolicy]


class PartitionOwnership:
    def __init__(
        self,
        leases: PartitionLeases,
        studies: StudyStore,
        policy_of: PolicyOf,
    ) -> None:
        self.leases = leases
        self.studies = studies
        self.policy_of = policy_of
        self.settings = leases.settings
        self._held: dict[PartitionKey, int] = {}  # partition -> fencing token
        self._renewed: dict[PartitionKey, float] = {}  # monotonic time of the last renewal
        self._specs: dict[str, StudySpec] = {}  # a study's config never changes
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._nudged = threading.Event()
        self._thread = threading.Thread(target=self._run, name="partition-leases", daemon=True)

    @property
    def member(self) -> str:
        return self.leases.member

    def buffer(self, key: PartitionKey) -> SharedBuffer:
        """The shared buffer of ``key`` (called when this process builds its policy: the
        partition's first request here, so the next scan runs now, not up to a renewal
        interval later: a new study's partitions get owners at once)."""
        self._nudged.set()
        return SharedBuffer(self.leases, key, self)

    def token(self, key: PartitionKey) -> int | None:
        """Our fencing token of ``key`` while our lease surely holds (renewed within a
        ttl by our clock; Redis fences a push made after it lapsed anyway)."""
        with self._lock:
            token = self._held.get(key)
            renewed = self._renewed.get(key, 0.0)
        if token is None or time.monotonic() - renewed >= self.settings.ttl:
            return None
        return token

    def owned(self) -> list[PartitionKey]:
        with self._lock:
            return sorted(self._held)

    def lost(self, key: PartitionKey) -> None:
        """Our lease of ``key`` is gone (a fenced push said so)."""
        with self._lock:
            if self._held.pop(key, None) is not None:
                log.warning("partition %s/%d: lease lost", *key, extra={"study_id": key[0]})
            self._renewed.pop(key, None)

    # ------------------------------------------------------------------ the loop

    def start(self) -> PartitionOwnership:
        self.scan_once()
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop scanning and hand every partition back (the others take them at once)."""
        self._stop.set()
        self._nudged.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            held, self._held = dict(self._held), {}
            self._renewed.clear()
        for key, token in held.items():
            try:
                self.leases.release(key, token)
            except Exception:  # noqa: BLE001 - the lease then lapses after its ttl
                log.warning("could not release partition %s/%d", *key)
        try:
            self.leases.leave()
        except Exception:  # noqa: BLE001 - the member entry then lapses after a ttl
            log.warning("could not leave the suggest members")

    def _run(self) -> None:
        while True:
            self._nudged.wait(self.settings.renew)
            self._nudged.clear()
            if self._stop.is_set():
                return
            try:
                self.scan_once()
            except Exception:  # noqa: BLE001 - keep scanning through Redis blips
                log.exception("partition lease scan failed; retrying")

    def scan_once(self) -> None:
        """Heartbeat, renew what we hold, then take or give partitions (module docstring)."""
        began = time.monotonic()
        live = self.leases.heartbeat()
        self._renew(began)
        specs = self._studies()
        partitions = [(sid, p) for sid, spec in specs.items() for p in range(spec.partitions)]
        owners = [o[0] if o else None for o in self.leases.owners(partitions)]
        take, give = rebalance(self.member, partitions, owners, live)
        for key in give:
            with self._lock:
                token = self._held.pop(key, None)
                self._renewed.pop(key, None)
            if token is not None:
                self.leases.release(key, token)
                log.info("partition %s/%d released (fair share of %d members)", *key, live,
                         extra={"study_id": key[0]})
        for key in take:
            token = self.leases.acquire(key)
            if not token:
                continue  # another member was faster
            with self._lock:
                self._held[key] = token
                self._renewed[key] = time.monotonic()
            log.info("partition %s/%d owned (token %d, %d members)", *key, token, live,
                     extra={"study_id": key[0]})
            self.policy_of(key[0], specs[key[0]], key[1])

    def _renew(self, began: float) -> None:
        with self._lock:
            held = list(self._held.items())
        if not held:
            return
        for (key, _), ok in zip(held, self.leases.renew_many(held), strict=True):
            if ok:
                with self._lock:
                    if key in self._held:
                        self._renewed[key] = began
            else:
                self.lost(key)

    def _studies(self) -> dict[str, StudySpec]:
        """The ACTIVE studies whose suggestions come from a model (a quasi-random study
        answers in microseconds in any replica: nothing to own)."""
        out = {}
        for study in self.studies.list():
            if study.state != lifecycle.ACTIVE:
                continue
            spec = self._specs.get(study.study_id)
            if spec is None:
                try:
                    spec = StudySpec.from_proto(study.config)
                except ValueError:  # a stored config that no longer validates
                    log.warning("study %s: config does not validate; not owned",
                                study.study_id, exc_info=True)
                    continue
                self._specs[study.study_id] = spec
            if spec.algorithm is not Algorithm.RANDOM:
                out[study.study_id] = spec
        return out


class SharedBuffer:
    """A ``ReadyBuffer`` (``ladder.samplers.ready``) in the partition's Redis list."""

    shared = True

    def __init__(
        self, leases: PartitionLeases, key: PartitionKey, ownership: PartitionOwnership
    ) -> None:
        self.leases = leases
        self.key = key
        self.ownership = ownership

    def take(self, count: int) -> tuple[list[Proposal], int]:
        items, left = self.leases.pop(self.key, count)
        return [decode(item) for item in items], left

    def size(self) -> int:
        return self.leases.poll(self.key)[0]

    def proposals(self) -> list[Proposal]:
        return [decode(item) for item in self.leases.peek(self.key)]

    def fill(self, proposals: Sequence[Proposal], replace: bool) -> int:
        token = self.ownership.token(self.key)
        if token is None:
            return -1
        size = self.leases.push(self.key, token, [encode(p) for p in proposals], replace)
        if size < 0:
            self.ownership.lost(self.key)
        return size

    def owned(self) -> bool:
        return self.ownership.token(self.key) is not None

    def poll(self) -> tuple[int, int]:
        return self.leases.poll(self.key)
