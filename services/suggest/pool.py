"""The samplers this suggest process holds: one per (study, partition).

Studies are immutable once created, so their config and encoded space are
cached. Observations are kept per study, keyed by (trial id, resource) so a
replayed event changes nothing:

* a COMPLETED trial from the trials topic: its final value, ``resource=None``;
* an early-stop ``Decision`` from the decisions topic: the smoothed value the
  trial had when it crossed a rung, ``resource`` = that rung's resource (the
  samplers decide which fidelity to model, BOHB-style);
* warm start: the study's known configurations with values, and the COMPLETED
  trials of ``warm_start.from_study_id`` that are valid points of this space.

Quasi-random studies are served directly (instant). Model-based studies get a
``SuggestionBuffer`` per partition: a background refit loop keeps ready
suggestions so a request never waits for a model fit (see
``ladder.samplers.buffered``). A sampler built later starts from all of the
study's observations.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ladder.params import PlainValue, params_to_dict
from ladder.samplers import FACTORIES, Observation, Sampler, make_sampler
from ladder.samplers.base import ObservationKey
from ladder.samplers.buffered import Served, SuggestionBuffer
from ladder.space import Space, SpaceError
from ladder.state import StudyStore, TrialStore
from ladder.v1 import study_pb2, trial_pb2

from services.suggest.refit import RefitProcess, RemoteSampler

log = logging.getLogger("ladder.suggest.pool")

PendingOf = Callable[[study_pb2.Study], Sequence[Mapping[str, PlainValue]]]


# Draws the quasi-random fallback reserves from Redis at a time: a buffer miss is
# then answered without a Redis round trip (unused draws of a block are skipped
# when the process stops: indices stay unique, the stream just has gaps).
FALLBACK_DRAW_BLOCK = 16


class BlockReserver:
    """A ``DrawReserver`` that takes draws from Redis ``block`` at a time."""

    def __init__(self, reserve: Callable[[int], int], block: int) -> None:
        self._reserve = reserve
        self._block = block
        self._next = self._end = 0
        self._lock = threading.Lock()

    def __call__(self, count: int) -> int:
        with self._lock:
            if self._end - self._next < count:
                size = max(count, self._block)
                self._next = self._reserve(size)
                self._end = self._next + size
            first = self._next
            self._next += count
            return first


def partition_of(worker_id: str, partitions: int) -> int:
    """Stable routing of a worker to a suggestion partition (crc32 mod P)."""
    return zlib.crc32(worker_id.encode()) % max(1, partitions)


@dataclass
class PartitionSampler:
    """What answers a partition's requests: a buffer, or an instant sampler."""

    sampler: Sampler | None
    buffer: SuggestionBuffer | None

    def take(self, count: int) -> list[Served]:
        if self.buffer is not None:
            return self.buffer.take(count)
        assert self.sampler is not None
        return [Served(p, self.sampler.algorithm, True) for p in self.sampler.suggest(count)]

    def stop(self, timeout: float) -> None:
        if self.buffer is not None:
            self.buffer.stop(timeout)


class SamplerPool:
    def __init__(
        self,
        trials: TrialStore,
        studies: StudyStore,
        buffer_capacity: int,
        pending_of: PendingOf,
        refit_process: RefitProcess | None = None,
    ) -> None:
        self.trials = trials
        # Set: model-based samplers live in that child process (see refit.py);
        # None: in this process, on the buffers' refit threads.
        self.refit_process = refit_process
        self.studies = studies
        self.buffer_capacity = buffer_capacity
        self.pending_of = pending_of
        self._partitions: dict[tuple[str, int], PartitionSampler] = {}
        self._spaces: dict[str, Space] = {}
        self._observations: dict[str, dict[ObservationKey, Observation]] = {}
        self._warm_loaded: set[str] = set()
        self._lock = threading.Lock()
        self._stopped = False

    def space(self, study: study_pb2.Study) -> Space:
        with self._lock:
            space = self._spaces.get(study.study_id)
            if space is None:
                space = self._spaces[study.study_id] = Space.from_proto(study.config.space)
            return space

    def reserver(self, study_id: str, partition: int) -> Callable[[int], int]:
        """The partition's draw counter in Redis (shared by every sampler of it)."""
        return lambda n: self.trials.reserve_draws(study_id, partition, n)

    def partition(self, study: study_pb2.Study, partition: int) -> PartitionSampler:
        key = (study.study_id, partition)
        with self._lock:
            entry = self._partitions.get(key)
        if entry is not None:
            return entry
        space = self.space(study)
        reserve = self.reserver(study.study_id, partition)
        quasi_random = study_pb2.StudyConfig(seed=study.config.seed, algorithm=study_pb2.RANDOM)
        fallback = make_sampler(
            quasi_random,
            space,
            partition,
            BlockReserver(reserve, FALLBACK_DRAW_BLOCK),
            study.study_id,
        )
        # Quasi-random (and algorithms without an implementation, which fall back
        # to it) answer in microseconds: no buffer. Deciding by config keeps the
        # model-based samplers (torch import) off the request path entirely.
        quasi_random_kinds = (study_pb2.RANDOM, study_pb2.ALGORITHM_UNSPECIFIED)
        algorithm = study.config.algorithm
        instant = algorithm in quasi_random_kinds or algorithm not in FACTORIES
        with self._lock:
            entry = self._partitions.get(key)
            if entry is not None:  # another request built it meanwhile
                return entry
            if instant:
                direct = make_sampler(study.config, space, partition, reserve, study.study_id)
                entry = PartitionSampler(sampler=direct, buffer=None)
            else:
                buffer = SuggestionBuffer(
                    lambda: self._build_model(study, partition),
                    fallback,
                    capacity=self.buffer_capacity,
                    pending=lambda: self.pending_of(study),
                    name=f"{study.study_id}/{partition}",
                )
                entry = PartitionSampler(sampler=None, buffer=buffer)
                if not self._stopped:
                    buffer.start()
            self._partitions[key] = entry
        return entry

    def _build_model(self, study: study_pb2.Study, partition: int) -> Sampler:
        """Runs on the partition's refit thread: import and build the sampler,
        then feed it everything the study has observed so far."""
        space = self.space(study)
        sampler: Sampler
        if self.refit_process is not None:
            sampler = RemoteSampler(self.refit_process, study, partition, space)
        else:
            sampler = make_sampler(
                study.config,
                space,
                partition,
                self.reserver(study.study_id, partition),
                study.study_id,
            )
        self._load_warm_start(study, space)
        with self._lock:
            known = list(self._observations.get(study.study_id, {}).values())
        sampler.update(known)  # also opens a remote sampler (its algorithm name)
        log.info(
            "%s sampler for %s/%d built with %d observations",
            sampler.algorithm,
            study.study_id,
            partition,
            len(known),
            extra={"study_id": study.study_id},
        )
        return sampler

    # ------------------------------------------------------------ observations

    def observe(self, study_id: str, observations: Sequence[Observation]) -> int:
        """Record observations of a study and feed its buffers; returns how many
        were new (a replayed one, same trial id and resource, changes nothing)."""
        with self._lock:
            seen = self._observations.setdefault(study_id, {})
            new = []
            for o in observations:
                if o.key not in seen:
                    seen[o.key] = o
                    new.append(o)
            buffers = [
                e.buffer
                for (sid, _), e in self._partitions.items()
                if sid == study_id and e.buffer is not None
            ]
        for buffer in buffers:
            buffer.update(new)
        return len(new)

    def observe_completed(self, trial: trial_pb2.Trial) -> bool:
        """A COMPLETED trial becomes a full-fidelity observation; False if known."""
        if not trial.has_final_value or not math.isfinite(trial.final_value):
            return False
        observation = Observation(
            trial_id=trial.trial_id, params=params_to_dict(trial.params), value=trial.final_value
        )
        return self.observe(trial.study_id, [observation]) == 1

    def observation_count(self, study_id: str) -> int:
        with self._lock:
            return len(self._observations.get(study_id, {}))

    def _load_warm_start(self, study: study_pb2.Study, space: Space) -> None:
        """Once per study and process: known results and an earlier study's
        completed trials become observations (invalid points skipped, counted)."""
        with self._lock:
            if study.study_id in self._warm_loaded:
                return
            self._warm_loaded.add(study.study_id)
        warm = study.config.warm_start
        observations = [
            Observation(
                trial_id=f"{study.study_id}-warm{i}",
                params=params_to_dict(known.params),
                value=known.value,
            )
            for i, known in enumerate(warm.configurations)
            if known.has_value and math.isfinite(known.value)
        ]
        taken = skipped = 0
        if warm.from_study_id:
            for trial in self.completed_trials(warm.from_study_id):
                params = params_to_dict(trial.params)
                try:
                    space.check_params(params)
                except SpaceError:
                    skipped += 1
                    continue
                observations.append(
                    Observation(trial_id=trial.trial_id, params=params, value=trial.final_value)
                )
                taken += 1
            log.info(
                "warm start of %s from study %s: %d completed trials taken, "
                "%d skipped (not valid in this space)",
                study.study_id,
                warm.from_study_id,
                taken,
                skipped,
                extra={"study_id": study.study_id},
            )
        if observations:
            self.observe(study.study_id, observations)

    def completed_trials(self, study_id: str) -> list[trial_pb2.Trial]:
        """The COMPLETED trials (finite value) of a study, read from Redis.
        Trial ids are ``<study>-t<n>`` for n = 1 .. trials suggested."""
        count = self.studies.suggested(study_id)
        trials = self.trials.get_many([f"{study_id}-t{n}" for n in range(1, count + 1)])
        return [
            t
            for t in trials
            if t.state == trial_pb2.COMPLETED and t.has_final_value and math.isfinite(t.final_value)
        ]

    # ------------------------------------------------------------------ shutdown

    def buffers(self) -> list[SuggestionBuffer]:
        with self._lock:
            return [e.buffer for e in self._partitions.values() if e.buffer is not None]

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every refit loop (SIGTERM path); new buffers are not started.

        All loops are told first, then the refit process is terminated (which
        ends a refit in flight), then the threads are joined within ``timeout``."""
        with self._lock:
            self._stopped = True
            entries = list(self._partitions.values())
        for entry in entries:
            entry.stop(0)
        if self.refit_process is not None:
            self.refit_process.stop()
        deadline = time.monotonic() + timeout
        for entry in entries:
            entry.stop(max(0.0, deadline - time.monotonic()))
