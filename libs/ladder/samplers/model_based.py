"""What every model-based sampler (GP, TPE) does around its model.

Each fits one fidelity (``select_fidelity`` with the sampler's ``startup`` as the
threshold) and, while that fidelity holds too little to fit, proposes the
partition's quasi-random stream instead, under its own name. Both streams take
their draws from the one counter of the partition, so draw indices (and the trial
seeds derived from them) stay unique whichever of the two made a point.

Infeasible observations (failed trials, ``base.INFEASIBLE_KINDS``) are points of
the initial design like any other: the model is fitted once the chosen fidelity's
feasible values plus the infeasible points reach ``startup``, with at least one
feasible value to model. How each model uses them is its own (gp.py, tpe.py).

No wasted evaluations (``distinct.py``): the configurations taken by every
observation (any fidelity) and pending point reach the model as a ``Taken``, and
the quasi-random start skips them too.
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Sequence

from ladder.samplers.base import (
    FidelitySet,
    Observation,
    Pending,
    Proposal,
    Sampler,
    SamplerContext,
    select_fidelity,
)
from ladder.samplers.distinct import Taken
from ladder.samplers.quasirandom import QuasiRandomSampler


class ModelBasedSampler(Sampler):
    """A sampler whose model needs ``startup`` observations of one fidelity."""

    model_based = True

    def __init__(self, context: SamplerContext, startup: int) -> None:
        super().__init__(context)
        self.startup = startup
        self._initial = QuasiRandomSampler(dataclasses.replace(context, reserve=self.reserve))

    def training_set(self, observations: Sequence[Observation]) -> FidelitySet:
        """The observations the model is fitted on (one fidelity)."""
        return select_fidelity(observations, self.startup)

    def can_fit(self, training: FidelitySet, pending: Pending) -> bool:
        """Whether ``training`` is enough to leave the initial design."""
        return bool(training.observations) and training.size >= self.startup

    def _suggest(
        self, observations: Sequence[Observation], count: int, pending: Pending
    ) -> list[Proposal]:
        fidelity = self.training_set(observations)
        if not self.can_fit(fidelity, pending):
            initial = self._initial.suggest(observations, count, pending)
            return [dataclasses.replace(p, algorithm=self.algorithm) for p in initial]
        taken = Taken.of(self.space, observations, pending, self.context.repeats)
        return self._from_model(fidelity, count, pending, self.reserve(count), taken)

    @abstractmethod
    def _from_model(
        self, fidelity: FidelitySet, count: int, pending: Pending, first: int, taken: Taken
    ) -> list[Proposal]:
        """``count`` proposals from the model fitted on ``fidelity``, numbered
        from draw ``first`` (already reserved), none of them ``taken`` (nor two
        the same) unless ``taken`` says the space is exhausted."""
