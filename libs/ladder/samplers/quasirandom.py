"""Quasi-random search: a scrambled Sobol' sequence per (study, partition).

Each partition scrambles its own Sobol' sequence with a seed derived from the
study seed and the partition number, so partitions draw different,
reproducible streams and a partition's points stay well spread on their own
(low discrepancy holds for each stream, which is what a single partition's
workers see). The position in the stream comes from the ``DrawReserver``: the
service backs it with a Redis counter, so a restarted suggest process continues
after the last point handed out instead of repeating the sequence.

On a space where configurations can repeat (``distinct.repeatable``: ints,
ordinals, categoricals), a point of the stream that is already taken (observed,
pending or earlier in the call; ``distinct.py``) is replaced by the unseen
configuration farthest from every taken one, among ``SPREAD_CANDIDATES`` drawn
uniformly (seeded by the draw), so the points keep filling the space. The draw
number stays the stream's, so a replacement costs no extra draw. Once every
configuration is taken, the stream's points are used as they come.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from collections.abc import Sequence

import numpy as np
from scipy.stats import qmc

from ladder.params import PlainValue
from ladder.samplers.base import (
    Observation,
    Pending,
    Proposal,
    Sampler,
    SamplerContext,
    derive_seed,
)
from ladder.samplers.distinct import Taken, farthest, unseen

# scipy's Sobol' engine (30 bits) yields 2**30 points; past that a partition moves
# on to a freshly scrambled "generation" instead of wrapping around.
GENERATION_SIZE = 2**30
# Unseen configurations a taken stream point is replaced from (module docstring).
SPREAD_CANDIDATES = 32


class QuasiRandomSampler(Sampler):
    algorithm = "quasi-random"

    def __init__(self, context: SamplerContext) -> None:
        super().__init__(context)
        self._engine: qmc.Sobol | None = None
        self._generation = -1
        self._lock = threading.Lock()

    def _suggest(
        self, observations: Sequence[Observation], count: int, pending: Pending
    ) -> list[Proposal]:
        """The next ``count`` points of the stream, taken ones replaced."""
        first = self.reserve(count)
        points = self.points(first, count)
        proposals = [
            Proposal(
                params=self.space.sample_to_params(point), draw=first + i, algorithm=self.algorithm
            )
            for i, point in enumerate(points)
        ]
        taken = Taken.of(self.space, observations, pending, self.context.repeats)
        if not taken.active:
            return proposals
        for i, proposal in enumerate(proposals):
            if taken.blocks(proposal.params):
                proposals[i] = dataclasses.replace(
                    proposal, params=self._spread(taken, proposal.draw, proposal.params)
                )
            taken.add(proposals[i].params)
        return proposals

    def _spread(
        self, taken: Taken, draw: int, params: dict[str, PlainValue]
    ) -> dict[str, PlainValue]:
        """The unseen configuration farthest from the taken ones (``params`` when
        none is found)."""
        rng = np.random.default_rng(derive_seed(self.context.seed, self.context.partition, draw))
        candidates = unseen(self.space, taken, rng, SPREAD_CANDIDATES)
        if not candidates:
            return params
        return candidates[farthest(self.space, candidates, taken)]

    def points(self, first: int, count: int) -> np.ndarray:
        """Unit-cube points ``first .. first+count-1`` of this partition's stream."""
        chunks = []
        index, remaining = first, count
        while remaining:
            generation, offset = divmod(index, GENERATION_SIZE)
            take = min(remaining, GENERATION_SIZE - offset)
            chunks.append(self._draw(generation, offset, take))
            index += take
            remaining -= take
        return np.concatenate(chunks)

    def _draw(self, generation: int, offset: int, count: int) -> np.ndarray:
        with self._lock:
            engine = self._engine_for(generation)
            if engine.num_generated > offset:
                engine.reset()
            if engine.num_generated < offset:
                # O(skip) but only after a restart or when another process of the
                # same partition drew in between.
                engine.fast_forward(offset - engine.num_generated)
            with warnings.catch_warnings():
                # Balance warnings are about n not being a power of 2; single
                # draws from a long-running stream are the normal case here.
                warnings.simplefilter("ignore", UserWarning)
                return engine.random(count)

    def _engine_for(self, generation: int) -> qmc.Sobol:
        if self._engine is None or generation != self._generation:
            seed = np.random.SeedSequence(
                entropy=int(self.context.seed),
                spawn_key=(int(self.context.partition), generation),
            )
            self._engine = qmc.Sobol(
                self.space.dim(), scramble=True, rng=np.random.default_rng(seed)
            )
            self._generation = generation
        return self._engine
