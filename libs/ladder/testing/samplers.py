"""What the sampler tests share: observations of a known objective, so a test states
only the space, the objective and how many points a sampler has seen."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ladder.params import PlainValue
from ladder.samplers.base import Observation
from ladder.space import Space


def random_observations(
    space: Space,
    n: int,
    value: Callable[[dict[str, PlainValue]], float],
    seed: int = 0,
) -> list[Observation]:
    """``value`` observed at ``n`` uniformly random points of ``space`` (trials
    ``t0``..; the same points for the same ``seed``)."""
    rng = np.random.default_rng(seed)
    points = [space.sample_to_params(rng.random(space.dim())) for _ in range(n)]
    return [Observation(f"t{i}", p, value(p)) for i, p in enumerate(points)]
