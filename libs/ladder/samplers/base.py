"""The sampler ("designer") interface shared by every search algorithm.

A sampler is pure, in-memory code. The suggest service owns one sampler per
(study, partition), feeds it completed observations with ``update`` and asks it
for points with ``suggest``; everything durable (which draws were handed out,
pending trials) lives outside, in Redis, and is passed in.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ladder.params import PlainValue
from ladder.space import Space

# reserve(count) -> index of the first of ``count`` consecutive draws now owned by
# the caller. Backed by a Redis counter in the service so a restarted (or a
# second) suggest process continues a partition's sequence instead of repeating it.
DrawReserver = Callable[[int], int]


@dataclass(frozen=True)
class Observation:
    """A completed trial as the sampler sees it (``value`` as reported, finite)."""

    trial_id: str
    params: Mapping[str, PlainValue]
    value: float


@dataclass(frozen=True)
class Proposal:
    """One suggested point. ``draw`` is its index in the partition's draw stream
    (unique per study and partition; used to derive the trial's seed)."""

    params: dict[str, PlainValue]
    draw: int
    predicted_mean: float = 0.0
    predicted_std: float = 0.0


@dataclass(frozen=True)
class SamplerContext:
    """Everything a sampler factory may need to build a sampler."""

    space: Space
    seed: int
    partition: int = 0
    partitions: int = 1
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


@dataclass
class Sampler(ABC):
    """Base class: keeps completed observations; subclasses implement ``suggest``."""

    context: SamplerContext
    observations: dict[str, Observation] = field(default_factory=dict)
    # Whether ``suggest`` uses ``pending``; lets the service skip fetching it.
    uses_pending = False
    algorithm = "abstract"

    @property
    def space(self) -> Space:
        return self.context.space

    def update(self, completed: Sequence[Observation]) -> None:
        """Record completed trials. Idempotent: an observation seen before (same
        trial id) replaces the old one instead of counting twice."""
        for obs in completed:
            self.observations[obs.trial_id] = obs

    @abstractmethod
    def suggest(
        self, count: int, pending: Sequence[Mapping[str, PlainValue]] = ()
    ) -> list[Proposal]:
        """``count`` new points; ``pending`` are points being evaluated right now."""


def derive_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (study seed, partition, draw...)."""
    sequence = np.random.SeedSequence(
        entropy=int(parts[0]), spawn_key=tuple(int(p) for p in parts[1:])
    )
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))
