"""TPE batches encode each observation once (rows cached by key) and append each new
point to the bad set: the same points as encoding everything for every point; above
POINT_BY_POINT_MAX points they come from one shared pool of candidates."""

from __future__ import annotations

import math

import numpy as np
from ladder.samplers import LocalDraws, QuasiRandomSampler, SamplerContext, derive_seed
from ladder.samplers.distinct import Taken, config_key
from ladder.samplers.tpe import GAMMA, MAX_GOOD, TPESampler, propose
from ladder.space import Kind, ParamSpec, Space
from ladder.testing.samplers import random_observations

SPACE = Space(
    [
        ParamSpec("x", Kind.FLOAT, low=0, high=1),
        ParamSpec("n", Kind.INT, low=1, high=9),
        ParamSpec("opt", Kind.CATEGORICAL, values=("a", "b", "c")),
    ]
)


def value(p: dict) -> float:
    return (p["x"] - 0.4) ** 2 + abs(p["n"] - 3) + (p["opt"] != "c")


def reference(observations: list, count: int, pending: list, seed: int) -> list[dict]:
    """The batch as computed by re-encoding every point for every proposal."""
    order = sorted(observations, key=lambda o: (o.value, o.trial_id))
    n_good = min(max(1, math.ceil(GAMMA * len(order))), MAX_GOOD)
    good = [o.params for o in order[:n_good]]
    bad = [o.params for o in order[n_good:]] + list(pending)
    taken = Taken.of(SPACE, observations, pending)
    out = []
    for i in range(count):
        rng = np.random.default_rng(derive_seed(seed, 0, i))
        params = propose(SPACE, good, bad, rng, taken=taken)
        out.append(params)
        bad.append(params)
        taken.add(params)
    return out


def test_a_batch_equals_the_point_by_point_reference_and_reuses_rows() -> None:
    data = random_observations(SPACE, 40, value)
    pending = [{"x": 0.5, "n": 3, "opt": "c"}]
    sampler = TPESampler(SamplerContext(SPACE, seed=11, reserve=LocalDraws()))
    batch = sampler.suggest(data, 6, pending)
    assert [b.params for b in batch] == reference(data, 6, pending, 11)
    assert {b.model_observations for b in batch} == {40}
    assert len(sampler._rows) == 40
    more = random_observations(SPACE, 45, value)[40:]
    sampler.suggest([*data, *more], 2)
    assert len(sampler._rows) == 45  # only the new observations were encoded


def test_a_large_batch_comes_from_one_pool_spread_and_untaken() -> None:
    data = random_observations(SPACE, 60, value)
    sampler = TPESampler(SamplerContext(SPACE, seed=4, reserve=LocalDraws()))
    batch = sampler.suggest(data, 80)  # above POINT_BY_POINT_MAX
    assert len(batch) == 80 and [b.draw for b in batch] == list(range(80))
    for b in batch:
        SPACE.check_params(b.params)
    # The discrete part of the space has 27 values of (n, opt); x is a float, so the
    # points may share them, but none repeats a configuration.
    keys = {config_key(SPACE, b.params) for b in batch}
    assert len(keys) == 80
    assert not keys & {config_key(SPACE, o.params) for o in data}
    # The liar spreads the batch (not 80 copies of the best region), yet it favours
    # the good region over random points.
    assert len({(b.params["n"], b.params["opt"]) for b in batch}) >= 5
    random = QuasiRandomSampler(SamplerContext(SPACE, seed=2)).suggest((), 80)
    assert np.mean([value(b.params) for b in batch]) < np.mean([value(r.params) for r in random])
    again = TPESampler(SamplerContext(SPACE, seed=4, reserve=LocalDraws())).suggest(data, 80)
    assert [b.params for b in again] == [b.params for b in batch]


def test_a_large_batch_on_a_small_space_falls_back_point_by_point() -> None:
    tiny = Space(
        [
            ParamSpec("n", Kind.INT, low=1, high=8),
            ParamSpec("opt", Kind.CATEGORICAL, values=("a", "b", "c", "d")),
        ]
    )
    data = random_observations(tiny, 12, lambda p: abs(p["n"] - 2) + (p["opt"] != "a"))
    observed = {config_key(tiny, o.params) for o in data}
    batch = TPESampler(SamplerContext(tiny, seed=1, reserve=LocalDraws())).suggest(
        data, 32 - len(observed)
    )
    keys = [config_key(tiny, b.params) for b in batch]
    # Every configuration not yet taken, once: the pool alone may miss some.
    assert len(set(keys)) == len(keys) == 32 - len(observed) > 16
    assert not set(keys) & observed
