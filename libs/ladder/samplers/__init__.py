"""Search algorithms behind one designer-style interface.

``Sampler.suggest(observations, count, pending)`` returns new points from the
observations it is given — final values of completed trials and, with
``Observation.resource`` set, rung values of trials still running or stopped
early; each model-based sampler fits one fidelity at a time
(``base.select_fidelity``) — and failed trials (``Observation.of_failure``), which
inform the model-based samplers when their failure kind is one of
``INFEASIBLE_KINDS``. A sampler stores no observations: the
``SuggestionPolicy`` of a (study, partition) holds them (``policy.py``).
``make_sampler`` picks the implementation from ``StudySpec.algorithm`` (an
unspecified algorithm is already RANDOM there):

| algorithm            | sampler                                               |
|----------------------|-------------------------------------------------------|
| RANDOM               | ``QuasiRandomSampler`` (scrambled Sobol')             |
| GP                   | ``GPSampler`` (BoTorch GP, qLogEI with pending points)  |
| TPE                  | ``TPESampler`` (multivariate TPE, constant liar)      |
| AUTO                 | ``AutoSampler`` (GP or TPE by space shape, see auto.py) |

GP and AUTO import torch lazily, on the first such study.

On a finite or discrete space no sampler suggests a configuration already
evaluated or in flight, nor one twice in a call, until every configuration is
taken (``distinct.py``; ``SamplerContext.repeats`` turns the rule off).

Adding an algorithm means writing a ``Sampler`` subclass (a ``ModelBasedSampler``
for one that fits a model after a quasi-random start, see model_based.py) and
registering its factory in ``FACTORIES``; callers do not change.
"""

from __future__ import annotations

from collections.abc import Callable

from ladder.samplers.base import (
    INFEASIBLE_KINDS,
    DrawReserver,
    FidelitySet,
    LocalDraws,
    Observation,
    Pending,
    Proposal,
    Sampler,
    SamplerContext,
    derive_seed,
    select_fidelity,
)
from ladder.samplers.model_based import ModelBasedSampler
from ladder.samplers.policy import (
    FALLBACK_ALGORITHM,
    LocalRefit,
    ObservationStore,
    Refit,
    SuggestionPolicy,
)
from ladder.samplers.quasirandom import QuasiRandomSampler
from ladder.samplers.tpe import TPESampler
from ladder.study import Algorithm, StudySpec

SamplerFactory = Callable[[SamplerContext], Sampler]


def _gp(context: SamplerContext) -> Sampler:
    # Imported on first use: torch/BoTorch take seconds to import and only GP
    # (and AUTO) studies need them.
    from ladder.samplers.gp import GPSampler

    return GPSampler(context)


def _auto(context: SamplerContext) -> Sampler:
    from ladder.samplers.auto import AutoSampler

    return AutoSampler(context)


FACTORIES: dict[Algorithm, SamplerFactory] = {
    Algorithm.RANDOM: QuasiRandomSampler,
    Algorithm.GP: _gp,
    Algorithm.TPE: TPESampler,
    Algorithm.AUTO: _auto,
}


def make_sampler(
    spec: StudySpec, partition: int = 0, reserve: DrawReserver | None = None
) -> Sampler:
    """The sampler for one partition of a study."""
    context = SamplerContext(
        space=spec.space,
        seed=spec.seed,
        partition=partition,
        maximize=spec.maximize,
        reserve=reserve,
    )
    return FACTORIES[spec.algorithm](context)


__all__ = [
    "FACTORIES",
    "FALLBACK_ALGORITHM",
    "INFEASIBLE_KINDS",
    "LocalRefit",
    "ObservationStore",
    "Refit",
    "SuggestionPolicy",
    "DrawReserver",
    "LocalDraws",
    "FidelitySet",
    "ModelBasedSampler",
    "Observation",
    "Pending",
    "Proposal",
    "QuasiRandomSampler",
    "TPESampler",
    "Sampler",
    "SamplerContext",
    "derive_seed",
    "make_sampler",
    "select_fidelity",
]
