"""The suggestion policies this suggest process holds: one per (study, partition).

Each policy is built from the study's ``StudySpec`` (its space, algorithm, seed
and warm start; the caller holds one per study). Each study has one
``ObservationStore`` (keyed by trial id and resource, so a replayed event changes
nothing), shared by its partitions' policies:

* a COMPLETED trial from the trials topic: its final value, ``resource=None``;
* an early-stop ``Decision`` from the decisions topic: the smoothed value the
  trial had when it crossed a rung, ``resource`` = that rung's resource (the
  samplers decide which fidelity to model, BOHB-style);
* a FAILED trial from the trials topic: a failed observation with its failure
  kind (``Observation.of_failure``; the samplers decide which kinds make it
  infeasible, ``ladder.samplers.INFEASIBLE_KINDS``). A RESUMABLE trial has not
  failed: it runs again;
* warm start: the study's known configurations with values, and the COMPLETED
  and FAILED trials of ``warm_start.from_study_id`` that are valid points of
  this space (read once, on the first refit of the study).

Quasi-random studies are served directly (instant). Model-based studies get a
refit loop per partition that keeps ready suggestions, so a request never waits
for a model fit (see ``ladder.samplers.policy``); the sampler runs in the refit
processes (``refit.py``) or, without them, on the policy's refit thread. The
buffer holds between ``buffer_capacity`` (more for TPE: ``sizing.least_batch``) and
``buffer_max`` points, sized to the partition's requests (``sizing.py``); a miss
is answered by a TPE sampler in this process (it answers in milliseconds) once it
can fit the study's observations, by the quasi-random sampler before.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence

from ladder.params import PlainValue, params_to_dict
from ladder.samplers import (
    LocalRefit,
    Observation,
    ObservationStore,
    Proposal,
    QuasiRandomSampler,
    Refit,
    SamplerContext,
    SuggestionPolicy,
    TPESampler,
    make_sampler,
)
from ladder.samplers.policy import Pending
from ladder.samplers.ready import ReadyBuffer
from ladder.samplers.sizing import least_batch
from ladder.state import StudyStore, TrialStore
from ladder.study import Algorithm, StudySpec
from ladder.v1 import trial_pb2

from services.suggest.refit import RefitProcess

log = logging.getLogger("ladder.suggest.pool")

# The params of a study's pending trials, by study id.
PendingOf = Callable[[str], Sequence[Mapping[str, PlainValue]]]


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


class PolicyPool:
    def __init__(
        self,
        trials: TrialStore,
        studies: StudyStore,
        buffer_capacity: int,
        pending_of: PendingOf,
        refit_process: RefitProcess | None = None,
        buffer_max: int | None = None,
    ) -> None:
        self.trials = trials
        # Set: model-based samplers live in that child process (see refit.py);
        # None: in this process, on the policies' refit threads.
        self.refit_process = refit_process
        self.studies = studies
        self.buffer_capacity = buffer_capacity
        self.buffer_max = max(buffer_capacity, buffer_max or buffer_capacity)
        self.pending_of = pending_of
        self._policies: dict[tuple[str, int], SuggestionPolicy] = {}
        # Set by ``share``: the ready buffer of a model-based (study, partition).
        self._shared: Callable[[tuple[str, int]], ReadyBuffer] | None = None
        self._observations: dict[str, ObservationStore] = {}
        self._warm_loaded: set[str] = set()
        self._lock = threading.Lock()
        self._stopped = False

    def observations(self, study_id: str) -> ObservationStore:
        with self._lock:
            store = self._observations.get(study_id)
            if store is None:
                store = self._observations[study_id] = ObservationStore()
            return store

    def share(self, buffers: Callable[[tuple[str, int]], ReadyBuffer]) -> None:
        """Keep the ready suggestions of model-based partitions in ``buffers(key)``
        (owned partitions, ``ownership.py``) instead of this process; before any
        policy is built."""
        self._shared = buffers

    def reserver(self, study_id: str, partition: int) -> Callable[[int], int]:
        """The partition's draw counter in Redis (shared by every sampler of it)."""
        return lambda n: self.trials.reserve_draws(study_id, partition, n)

    def policy(self, study_id: str, spec: StudySpec, partition: int) -> SuggestionPolicy:
        key = (study_id, partition)
        with self._lock:
            policy = self._policies.get(key)
        if policy is not None:
            return policy
        observations = self.observations(study_id)
        reserve = self.reserver(study_id, partition)
        # Quasi-random studies answer in microseconds: no refit, the quasi-random
        # sampler serves every request. Deciding by the spec keeps the model-based
        # samplers (torch import) off the request path entirely.
        instant = spec.algorithm is Algorithm.RANDOM
        fallback_draws = reserve if instant else BlockReserver(reserve, FALLBACK_DRAW_BLOCK)
        fallback = QuasiRandomSampler(
            SamplerContext(
                space=spec.space, seed=spec.seed, partition=partition, reserve=fallback_draws
            )
        )
        # Misses of a model-based study: TPE on the same draw counter (no torch here).
        model_fallback = None
        if not instant:
            model_fallback = TPESampler(
                SamplerContext(
                    space=spec.space,
                    seed=spec.seed,
                    partition=partition,
                    maximize=spec.maximize,
                    reserve=fallback_draws,
                )
            )
        with self._lock:
            policy = self._policies.get(key)
            if policy is not None:  # another request built it meanwhile
                return policy
            least = least_batch(spec.algorithm, self.buffer_capacity)
            policy = SuggestionPolicy(
                observations,
                fallback,
                refit=None if instant else self._refit(study_id, spec, partition, observations),
                capacity=least,
                pending=lambda: self.pending_of(study_id),
                name=f"{study_id}/{partition}",
                max_capacity=max(least, self.buffer_max),
                model_fallback=model_fallback,
                ready=None if instant or self._shared is None else self._shared(key),
            )
            self._policies[key] = policy
            if not self._stopped:
                policy.start()
        return policy

    def _refit(
        self, study_id: str, spec: StudySpec, partition: int, observations: ObservationStore
    ) -> Refit:
        """The partition's refit; it loads the study's warm start first (on the
        refit thread: it may read many trials from Redis)."""
        refit: Refit
        if self.refit_process is not None:
            refit = self.refit_process.refit(study_id, spec, partition, observations)
        else:
            reserve = self.reserver(study_id, partition)
            refit = LocalRefit(lambda: make_sampler(spec, partition, reserve), observations)

        def warm_refit(count: int, pending: Pending) -> list[Proposal]:
            self._load_warm_start(study_id, spec)
            return refit(count, pending)

        return warm_refit

    # ------------------------------------------------------------ observations

    def observe(self, study_id: str, observations: Sequence[Observation]) -> int:
        """Record observations of a study (its policies refit); returns how many
        were new (a replayed one, same trial id and resource, changes nothing)."""
        return self.observations(study_id).add(observations)

    def observe_completed(self, trial: trial_pb2.Trial) -> bool:
        """A COMPLETED trial becomes a full-fidelity observation; False if known."""
        if not trial.has_final_value or not math.isfinite(trial.final_value):
            return False
        observation = Observation(
            trial_id=trial.trial_id, params=params_to_dict(trial.params), value=trial.final_value
        )
        return self.observe(trial.study_id, [observation]) == 1

    def observe_failed(self, trial: trial_pb2.Trial) -> Observation | None:
        """A FAILED trial becomes a failed observation of its kind; None if known."""
        observation = failed_observation(trial)
        return observation if self.observe(trial.study_id, [observation]) else None

    def _load_warm_start(self, study_id: str, spec: StudySpec) -> None:
        """Once per study and process: known results and an earlier study's
        completed trials become observations (invalid points skipped, counted)."""
        with self._lock:
            if study_id in self._warm_loaded:
                return
            self._warm_loaded.add(study_id)
        warm = spec.warm_start
        observations = [
            Observation(
                trial_id=f"{study_id}-warm{i}", params=dict(known.params), value=known.value
            )
            for i, known in enumerate(warm.configurations)
            if known.value is not None and math.isfinite(known.value)
        ]
        taken = skipped = 0
        if warm.from_study_id:
            failed = 0
            for trial in self.finished_trials(warm.from_study_id):
                params = params_to_dict(trial.params)
                if not spec.space.contains(params):
                    skipped += 1
                    continue
                if trial.state == trial_pb2.FAILED:
                    observations.append(failed_observation(trial))
                    failed += 1
                    continue
                observations.append(
                    Observation(trial_id=trial.trial_id, params=params, value=trial.final_value)
                )
                taken += 1
            log.info(
                "warm start of %s from study %s: %d completed trials taken, "
                "%d skipped (not valid in this space), %d failed trials taken",
                study_id,
                warm.from_study_id,
                taken,
                skipped,
                failed,
                extra={"study_id": study_id},
            )
        if observations:
            self.observe(study_id, observations)

    def finished_trials(self, study_id: str) -> list[trial_pb2.Trial]:
        """The COMPLETED (finite value) and FAILED trials of a study, read from Redis.
        Trial ids are ``<study>-t<n>`` for n = 1 .. trials suggested."""
        count = self.studies.suggested(study_id)
        trials = self.trials.get_many([f"{study_id}-t{n}" for n in range(1, count + 1)])
        return [
            t
            for t in trials
            if t.state == trial_pb2.FAILED
            or (
                t.state == trial_pb2.COMPLETED
                and t.has_final_value
                and math.isfinite(t.final_value)
            )
        ]

    # ------------------------------------------------------------------ shutdown

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every refit loop (SIGTERM path); new policies are not started.

        All loops are told first, then the refit process is terminated (which
        ends a refit in flight), then the threads are joined within ``timeout``."""
        with self._lock:
            self._stopped = True
            policies = list(self._policies.values())
        for policy in policies:
            policy.stop(0)
        if self.refit_process is not None:
            self.refit_process.stop()
        deadline = time.monotonic() + timeout
        for policy in policies:
            policy.stop(max(0.0, deadline - time.monotonic()))


def failed_observation(trial: trial_pb2.Trial) -> Observation:
    """The observation of a FAILED trial: its params and failure kind, no value."""
    return Observation.of_failure(trial.trial_id, params_to_dict(trial.params), trial.failure_kind)
