"""AUTO: a GP where a GP is the better model, TPE elsewhere.

Rule (decided per ``suggest`` call, from the space and the observation count):

| condition                                                           | sampler |
|---------------------------------------------------------------------|---------|
| some parameter is conditional on more than a quarter of parameters   | TPE     |
| categorical parameters are at least half of the parameters          | TPE     |
| more than ``MAX_GP_DIM`` unit-cube columns (categoricals one-hot)    | TPE     |
| more than ``MAX_GP_OBSERVATIONS`` observations in the training set  | TPE     |
| otherwise (mostly continuous, <= 20 columns, a few hundred trials)   | GP      |

Why: a GP with a stationary kernel models smooth, mostly continuous, moderate
dimensional objectives sample-efficiently, but its fit is cubic in the number
of observations and one-hot categoricals / inactive-child fillers violate its
smoothness assumptions; TPE's per-parameter densities are cheap and handle
categorical and tree-structured spaces natively. Both samplers see the same
observations and share the draw counter, so switching over mid-study (at
``MAX_GP_OBSERVATIONS``) is seamless. Each proposal's ``algorithm`` names the
sampler that made it ("auto:gp" / "auto:tpe").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ladder.samplers.base import Observation, Pending, Proposal, Sampler, SamplerContext
from ladder.samplers.gp import GPSampler
from ladder.samplers.tpe import TPESampler
from ladder.space import CategoricalEncoding, Kind, Space

MAX_GP_DIM = 20
MAX_GP_OBSERVATIONS = 300


def prefers_gp(space: Space) -> bool:
    """Whether the space suits a GP (the space part of the rule above)."""
    n = max(1, len(space))
    conditional = sum(p.parent is not None for p in space.params)
    categorical = sum(p.kind is Kind.CATEGORICAL for p in space.params)
    return (
        conditional * 4 <= n
        and categorical * 2 < n
        and space.dim(CategoricalEncoding.ONE_HOT) <= MAX_GP_DIM
    )


class AutoSampler(Sampler):
    algorithm = "auto"  # each proposal names the delegate: "auto:gp" or "auto:tpe"
    model_based = True

    def __init__(self, context: SamplerContext) -> None:
        super().__init__(context)
        shared = dataclasses.replace(context, reserve=self.reserve)
        self._gp = GPSampler(shared) if prefers_gp(context.space) else None
        self._tpe = TPESampler(shared)

    def _suggest(
        self, observations: Sequence[Observation], count: int, pending: Pending
    ) -> list[Proposal]:
        if (
            self._gp is not None
            and self._gp.training_set(observations).size <= MAX_GP_OBSERVATIONS
        ):
            name, delegate = "auto:gp", self._gp
        else:
            name, delegate = "auto:tpe", self._tpe
        proposals = delegate.suggest(observations, count, pending)
        return [dataclasses.replace(p, algorithm=name) for p in proposals]
