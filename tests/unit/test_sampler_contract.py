"""The contract every registered sampler keeps (``ladder.samplers.FACTORIES``).

A new algorithm registered there is checked here without writing a test: its
points are valid points of a conditional mixed space, reproducible for a seed,
numbered by unique draws, stamped with their provenance, and it copes with no
observations at all. Samplers that promise not to repeat a point (GP, and AUTO
when it uses the GP) are held to it for observed and pending points.
"""

from __future__ import annotations

import numpy as np
import pytest
from ladder import study
from ladder.samplers import FACTORIES, LocalDraws, Observation, Sampler, make_sampler
from ladder.space import Space
from ladder.study import Algorithm, StudySpec
from ladder.testing.samplers import random_observations
from ladder.v1 import space_pb2 as S
from ladder.v1 import study_pb2

SPACE_CONFIG = S.SearchSpace(
    parameters=[
        S.Parameter(name="x", float_range=S.FloatRange(low=0, high=1)),
        S.Parameter(name="opt", categorical=S.Categorical(choices=["a", "b"])),
        S.Parameter(
            name="mom",
            float_range=S.FloatRange(low=0, high=1),
            condition=S.Condition(parent="opt", parent_values=["a"]),
        ),
        S.Parameter(name="n", int_range=S.IntRange(low=1, high=4)),
    ]
)
SPACE = Space.from_proto(SPACE_CONFIG)
# Enough for every model-based sampler to leave its quasi-random start.
OBSERVED = 12
# Samplers that never suggest an observed or pending point again (README, "gp").
NO_REPEATS = {Algorithm.GP, Algorithm.AUTO}
MIN_DISTANCE = 1e-4

ALGORITHMS = [pytest.param(a, id=a.name) for a in sorted(FACTORIES)]


def value(p: dict) -> float:
    return (p["x"] - 0.3) ** 2 + (p["opt"] == "b") * 0.5 + abs(p["n"] - 2) / 10


def observations(seed: int = 0) -> list[Observation]:
    return random_observations(SPACE, OBSERVED, value, seed)


def sampler(algorithm: Algorithm, seed: int = 7) -> Sampler:
    config = study_pb2.StudyConfig(
        metric="loss",
        space=SPACE_CONFIG,
        seed=seed,
        algorithm=study.ALGORITHMS.number(algorithm),
        scheduler=study_pb2.SchedulerConfig(kind=study_pb2.NONE),
    )
    return make_sampler(StudySpec.from_proto(config), reserve=LocalDraws())


def distance(a: dict, b: dict) -> float:
    return float(np.linalg.norm(SPACE.params_to_unit(a) - SPACE.params_to_unit(b)))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_zero_observations_give_valid_points_with_unique_draws(algorithm: Algorithm) -> None:
    s = sampler(algorithm)
    proposals = s.suggest((), 4) + s.suggest((), 2)
    assert len(proposals) == 6
    for p in proposals:
        SPACE.check_params(p.params)  # children present exactly when active
        assert p.algorithm and p.predicted_std >= 0
    assert len({p.draw for p in proposals}) == 6
    assert s.suggest((), 0) == []


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_observed_points_give_valid_points_of_the_conditional_space(algorithm: Algorithm) -> None:
    data = observations()
    pending = [data[0].params, SPACE.sample_to_params(np.full(SPACE.dim(), 0.5))]
    proposals = sampler(algorithm).suggest(data, 2, pending)
    assert len(proposals) == 2 and proposals[0].draw != proposals[1].draw
    for p in proposals:
        SPACE.check_params(p.params)
        assert isinstance(p.params["n"], int)
        assert p.algorithm
    if algorithm in NO_REPEATS:
        for p in proposals:
            taken = [o.params for o in data] + pending
            assert min(distance(p.params, q) for q in taken) >= MIN_DISTANCE


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_same_seed_same_inputs_same_points(algorithm: Algorithm) -> None:
    data = observations()
    a, b = sampler(algorithm).suggest(data, 2), sampler(algorithm).suggest(data, 2)
    assert [p.params for p in a] == [p.params for p in b]
    assert [p.draw for p in a] == [p.draw for p in b]
    other = sampler(algorithm, seed=8).suggest(data, 2)
    assert [p.params for p in other] != [p.params for p in a]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_sampler_keeps_no_observations(algorithm: Algorithm) -> None:
    """Observations are the caller's: what one call was given does not leak
    into the next (the next call starts from the quasi-random design again)."""
    s, fresh = sampler(algorithm), sampler(algorithm)
    s.suggest(observations(), 1)
    fresh.suggest((), 1)  # the same draws consumed
    assert [p.params for p in s.suggest((), 2)] == [p.params for p in fresh.suggest((), 2)]
