"""Search algorithms behind one designer-style interface.

``Sampler.update(observations)`` feeds completed trials, ``Sampler.suggest(count,
pending)`` returns new points. ``make_sampler`` picks the implementation from
``StudyConfig.algorithm``:

| algorithm            | sampler today                                         |
|----------------------|-------------------------------------------------------|
| RANDOM / unspecified | ``QuasiRandomSampler`` (scrambled Sobol')             |
| GP, TPE, AUTO        | NOT IMPLEMENTED YET: falls back to ``QuasiRandomSampler`` |
|                      | and logs a note once per study                        |

Adding GP or TPE means writing a ``Sampler`` subclass and registering its
factory in ``FACTORIES``; callers do not change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ladder.samplers.base import (
    DrawReserver,
    LocalDraws,
    Observation,
    Proposal,
    Sampler,
    SamplerContext,
    derive_seed,
)
from ladder.samplers.quasirandom import QuasiRandomSampler
from ladder.space import Space
from ladder.v1 import study_pb2

log = logging.getLogger("ladder.samplers")

SamplerFactory = Callable[[SamplerContext], Sampler]

FACTORIES: dict[int, SamplerFactory] = {
    study_pb2.ALGORITHM_UNSPECIFIED: QuasiRandomSampler,
    study_pb2.RANDOM: QuasiRandomSampler,
}

_warned: set[tuple[str, int]] = set()


def make_sampler(
    config: study_pb2.StudyConfig,
    space: Space,
    partition: int = 0,
    reserve: DrawReserver | None = None,
    study_id: str = "",
) -> Sampler:
    """The sampler for one partition of a study (``config`` with defaults filled).

    GP, TPE and AUTO are not implemented yet: they return a QuasiRandomSampler
    (its ``algorithm`` says "quasi-random") and log that once per study.
    """
    context = SamplerContext(
        space=space,
        seed=config.seed,
        partition=partition,
        partitions=max(1, config.partitions),
        maximize=config.direction == study_pb2.MAXIMIZE,
        reserve=reserve,
    )
    factory = FACTORIES.get(config.algorithm)
    if factory is None:
        if (study_id, config.algorithm) not in _warned:
            _warned.add((study_id, config.algorithm))
            log.info(
                "algorithm %s is not implemented yet; using quasi-random (Sobol) sampling",
                study_pb2.Algorithm.Name(config.algorithm),
                extra={"study_id": study_id},
            )
        factory = QuasiRandomSampler
    return factory(context)


__all__ = [
    "FACTORIES",
    "DrawReserver",
    "LocalDraws",
    "Observation",
    "Proposal",
    "QuasiRandomSampler",
    "Sampler",
    "SamplerContext",
    "derive_seed",
    "make_sampler",
]
