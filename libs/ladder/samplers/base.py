"""The sampler ("designer") interface shared by every search algorithm.

A sampler owns no storage: ``suggest(observations, count, pending)`` takes what
the study has observed and the points being evaluated, and returns proposals.
Whoever calls it (``ladder.samplers.policy``, a benchmark) keeps the
observations; everything durable (which draws were handed out, pending trials)
lives outside, in Redis, and is passed in. A sampler may cache derived model
state (the GP keeps its last hyperparameters as the next fit's start).
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ladder.params import PlainValue
from ladder.space import Space

# reserve(count) -> index of the first of ``count`` consecutive draws now owned by
# the caller. Backed by a Redis counter in the service so a restarted (or a
# second) suggest process continues a partition's sequence instead of repeating it.
DrawReserver = Callable[[int], int]
# The points being evaluated right now (running trials, points handed out).
Pending = Sequence[Mapping[str, PlainValue]]


@dataclass(frozen=True)
class Observation:
    """One measured value of a trial, as the sampler sees it (``value`` as reported).

    ``resource`` is the fidelity: ``None`` for the final value of a COMPLETED
    trial (full fidelity); a float for the smoothed metric the trial had when it
    crossed a rung at that resource (from a ``Decision`` on the decisions topic).
    One trial can contribute one observation per fidelity, keyed by ``key`` =
    (trial_id, resource); samplers never fit values of two fidelities together
    (see ``select_fidelity``).
    """

    trial_id: str
    params: Mapping[str, PlainValue]
    value: float
    resource: float | None = None

    @property
    def key(self) -> ObservationKey:
        return (self.trial_id, self.resource)


# (trial_id, resource): one observation per trial and fidelity.
ObservationKey = tuple[str, float | None]


@dataclass(frozen=True)
class FidelitySet:
    """The observations of one fidelity a model is fitted on. ``resource`` is
    ``None`` for final values, else the rung resource they were measured at."""

    resource: float | None
    observations: list[Observation]


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
    """
    levels: dict[float | None, list[Observation]] = {}
    for obs in observations:
        if math.isfinite(obs.value):
            levels.setdefault(obs.resource, []).append(obs)
    finals = levels.pop(None, [])
    if len(finals) >= min_points:
        return FidelitySet(None, finals)
    for resource in sorted(levels, reverse=True):  # type: ignore[arg-type]
        if len(levels[resource]) >= min_points:
            return FidelitySet(resource, levels[resource])
    return FidelitySet(None, finals)


@dataclass(frozen=True)
class Proposal:
    """One suggested point. ``draw`` is its index in the partition's draw stream
    (unique per study and partition; used to derive the trial's seed).

    Provenance: ``algorithm`` names what chose the point (a sampler's name, the
    policy's quasi-random fallback, a warm-start seed); ``predicted_mean`` and
    ``predicted_std`` are the surrogate's view of it (0 without a model)."""

    params: dict[str, PlainValue]
    draw: int
    predicted_mean: float = 0.0
    predicted_std: float = 0.0
    algorithm: str = ""


@dataclass(frozen=True)
class SamplerContext:
    """Everything a sampler factory may need to build a sampler."""

    space: Space
    seed: int
    partition: int = 0
    maximize: bool = False
    reserve: DrawReserver | None = None


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
        mixed); ``pending`` are points being evaluated right now."""
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
