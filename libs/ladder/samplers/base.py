"""The sampler ("designer") interface shared by every search algorithm.

A sampler owns no storage: ``suggest(observations, count, pending)`` takes what
the study has observed and the points being evaluated, and returns proposals.
Whoever calls it (``ladder.samplers.policy``, a benchmark) keeps the
observations; everything durable (which draws were handed out, pending trials)
lives outside, in Redis, and is passed in. A sampler may cache derived model
state (the GP keeps its last hyperparameters as the next fit's start).

Failed trials. A FAILED trial is an observation too (``Observation.failed``: no
value, its ``failure`` kind), so a region that crashes is not invisible to the
samplers. Whether a failure says something about its region of the space is the
rule ``INFEASIBLE_KINDS`` below; the failures it names are *infeasible*
observations, which every model-based sampler uses (GP: penalised value, TPE: bad
group); the others are kept (counted, visible) but do not inform the models.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ladder import failures
from ladder.failures import FailureKind
from ladder.params import PlainValue
from ladder.space import Space

# reserve(count) -> index of the first of ``count`` consecutive draws now owned by
# the caller. Backed by a Redis counter in the service so a restarted (or a
# second) suggest process continues a partition's sequence instead of repeating it.
DrawReserver = Callable[[int], int]
# The points being evaluated right now (running trials, points handed out).
Pending = Sequence[Mapping[str, PlainValue]]


# Failure kinds that make a FAILED trial an infeasible observation: the failure is a
# property of its region of the space, so the model-based samplers steer away from it.
#
# * OUT_OF_MEMORY, DIVERGED, TIMEOUT: the configuration does not fit, blows up, or
#   runs too long; the same params fail the same way again.
# * INFRASTRUCTURE (a FAILED trial only has it once every counted attempt failed):
#   preemptions and lease expiries never count, so these are exceptions raised by
#   the training process itself, several times, usually on different workers; and
#   ``ladder.failures.classify`` files every unrecognised exception here, including
#   the config-dependent crashes common in tuning (shape mismatches, cuDNN or NCCL
#   errors at extreme sizes). A fleet-wide outage that fails every trial would mark
#   scattered points, which the ``failed observations`` log and metric make visible.
# * unset (an evaluate service older than failure kinds): as INFRASTRUCTURE; such a
#   service FAILED a trial only once its retryable attempts were used up.
#
# USER_ERROR does not inform: it is a bug in the training code (TypeError, NameError,
# ImportError, ...), which fails wherever the study samples and is fixed by a
# redeploy, after which the region is fine; marking its points infeasible would
# penalise random points of the space (a GP fitted on them learns noise). Optuna's
# samplers likewise ignore FAIL trials and use only constraint violations.
INFEASIBLE_KINDS: frozenset[FailureKind] = frozenset(
    {
        failures.OUT_OF_MEMORY,
        failures.DIVERGED,
        failures.TIMEOUT,
        failures.INFRASTRUCTURE,
        0,  # FAILURE_KIND_UNSPECIFIED
    }
)


@dataclass(frozen=True, eq=False)
class Observation:
    """One measured value of a trial, as the sampler sees it (``value`` as reported).

    ``resource`` is the fidelity: ``None`` for the final value of a COMPLETED
    trial (full fidelity); a float for the smoothed metric the trial had when it
    crossed a rung at that resource (from a ``Decision`` on the decisions topic).
    One trial can contribute one observation per fidelity, keyed by ``key`` =
    (trial_id, resource); samplers never fit values of two fidelities together
    (see ``select_fidelity``).

    ``failure`` is set (a ``FailureKind`` number, 0 when the evaluate service did
    not say) for a trial that ended FAILED: ``value`` is NaN and ``resource``
    ``None`` (``Observation.of_failure``). Equality treats two NaN values as equal,
    so a replayed failure is the same observation.
    """

    trial_id: str
    params: Mapping[str, PlainValue]
    value: float
    resource: float | None = None
    failure: FailureKind | None = None

    @classmethod
    def of_failure(
        cls, trial_id: str, params: Mapping[str, PlainValue], kind: FailureKind
    ) -> Observation:
        """The observation of a trial that ended FAILED with ``kind``."""
        return cls(trial_id, params, math.nan, None, int(kind))

    @property
    def key(self) -> ObservationKey:
        return (self.trial_id, self.resource)

    @property
    def failed(self) -> bool:
        return self.failure is not None

    @property
    def infeasible(self) -> bool:
        """A failure the samplers learn from (``INFEASIBLE_KINDS``)."""
        return self.failure is not None and self.failure in INFEASIBLE_KINDS

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Observation):
            return NotImplemented
        same_value = self.value == other.value or (
            math.isnan(self.value) and math.isnan(other.value)
        )
        return (
            same_value
            and self.trial_id == other.trial_id
            and self.resource == other.resource
            and self.failure == other.failure
            and self.params == other.params
        )

    __hash__ = None  # type: ignore[assignment]  # params is a mapping: not hashable


# (trial_id, resource): one observation per trial and fidelity.
ObservationKey = tuple[str, float | None]


@dataclass(frozen=True)
class FidelitySet:
    """The observations of one fidelity a model is fitted on. ``resource`` is
    ``None`` for final values, else the rung resource they were measured at.
    ``infeasible`` are the infeasible observations (failed trials), which belong
    to every fidelity."""

    resource: float | None
    observations: list[Observation]
    infeasible: list[Observation] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Points the model sees: feasible values and infeasible points."""
        return len(self.observations) + len(self.infeasible)


def select_fidelity(observations: Iterable[Observation], min_points: int) -> FidelitySet:
    """The single fidelity to model (BOHB-style), never a mix of levels.

    Rule, over finite values only:

    1. final values (``resource is None``) when there are at least ``min_points``;
    2. else the highest rung resource with at least ``min_points`` observations;
    3. else the final values, however few (the caller falls back to its initial
       design while they are too few to fit).

    Why: a final value is what the study optimises, so it wins as soon as it can
    support a fit; before that, the highest well-populated rung is the closest
    proxy (its ranking of configurations correlates best with final values), and
    early-stopped trials, which never complete, still inform the search.

    Infeasible observations (``Observation.infeasible``) join whichever fidelity is
    chosen: a configuration that runs out of memory or diverges fails at any
    resource. They replace the rung values their trials reported before failing:
    the rung is modelled as a proxy of the final outcome, and that outcome is known.
    Other failures (``USER_ERROR``) are left out; their trials' rung values stay.
    """
    observations = list(observations)
    infeasible = [obs for obs in observations if obs.infeasible]
    failed_trials = {obs.trial_id for obs in infeasible}
    levels: dict[float | None, list[Observation]] = {}
    for obs in observations:
        if math.isfinite(obs.value) and obs.trial_id not in failed_trials:
            levels.setdefault(obs.resource, []).append(obs)
    finals = levels.pop(None, [])
    if len(finals) >= min_points:
        return FidelitySet(None, finals, infeasible)
    for resource in sorted(levels, reverse=True):  # type: ignore[arg-type]
        if len(levels[resource]) >= min_points:
            return FidelitySet(resource, levels[resource], infeasible)
    return FidelitySet(None, finals, infeasible)


@dataclass(frozen=True)
class Proposal:
    """One suggested point. ``draw`` is its index in the partition's draw stream
    (unique per study and partition; used to derive the trial's seed).

    Provenance: ``algorithm`` names what chose the point (a sampler's name, the
    policy's quasi-random fallback, a warm-start seed); ``predicted_mean`` and
    ``predicted_std`` are the surrogate's view of it (0 without a model).

    The model behind it: ``model_observations`` are the observations its model was
    fitted on (0: no model, e.g. an initial design or a quasi-random point); the
    ``SuggestionPolicy`` that buffered it stamps ``study_observations`` (what the
    study had observed when the refit began) and ``fitted_unix`` (when), from which
    its staleness at hand-out time follows (``policy.staleness``)."""

    params: dict[str, PlainValue]
    draw: int
    predicted_mean: float = 0.0
    predicted_std: float = 0.0
    algorithm: str = ""
    model_observations: int = 0
    study_observations: int = 0
    fitted_unix: float = 0.0


@dataclass(frozen=True)
class SamplerContext:
    """Everything a sampler factory may need to build a sampler.

    ``repeats``: the study accepts suggestions of configurations already evaluated or
    in flight (e.g. to confirm finalists over seeds). Off, samplers keep the rule of
    ``distinct.py`` (no wasted evaluations); no study setting turns it on yet."""

    space: Space
    seed: int
    partition: int = 0
    maximize: bool = False
    reserve: DrawReserver | None = None
    repeats: bool = False


class LocalDraws:
    """In-memory ``DrawReserver`` (tests, single process without persistence)."""

    def __init__(self, start: int = 0) -> None:
        self._lock = threading.Lock()
        self._position = start

    def __call__(self, count: int) -> int:
        with self._lock:
            first = self._position
            self._position += count
            return first


class Sampler(ABC):
    """A search algorithm for one (study, partition); see the module docstring.

    ``suggest`` is the one entry point; a subclass implements ``_suggest``, which
    is only called for ``count >= 1``."""

    algorithm = "abstract"
    # Whether a model of the observations chooses its points (quasi-random ones only
    # skip configurations already taken, see distinct.py).
    model_based = False

    def __init__(self, context: SamplerContext) -> None:
        self.context = context
        # The partition's draw counter (a Redis counter in the service); a sampler
        # that delegates to another passes it on, so draw numbers stay unique.
        self.reserve: DrawReserver = context.reserve or LocalDraws()

    @property
    def space(self) -> Space:
        return self.context.space

    def suggest(
        self,
        observations: Sequence[Observation],
        count: int,
        pending: Pending = (),
    ) -> list[Proposal]:
        """``count`` new points, each stamped with its ``algorithm``.
        ``observations`` hold at most one per ``key`` (final and rung values
        mixed); ``pending`` are points being evaluated right now. On a finite or
        discrete space no point repeats an observed or pending configuration, nor
        another point of the call, until the space is exhausted (``distinct.py``)."""
        if count <= 0:
            return []
        return self._suggest(observations, count, pending)

    @abstractmethod
    def _suggest(
        self, observations: Sequence[Observation], count: int, pending: Pending
    ) -> list[Proposal]:
        """``suggest`` for ``count >= 1``."""


def derive_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (study seed, partition, draw...)."""
    sequence = np.random.SeedSequence(
        entropy=int(parts[0]), spawn_key=tuple(int(p) for p in parts[1:])
    )
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))
