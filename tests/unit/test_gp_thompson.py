"""GP batches at fleet sizes: above JOINT_MAX points asked or JOINT_PENDING_MAX pending
the batch is drawn by Thompson sampling (gp.py, "Large batches"); below, qLogEI as
before."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from ladder.samplers import LocalDraws, Observation, QuasiRandomSampler, SamplerContext
from ladder.samplers import gp as gp_module
from ladder.samplers.distinct import config_key
from ladder.samplers.gp import ENCODING, MIN_DISTANCE, GPSampler
from ladder.space import Kind, ParamSpec, Space
from ladder.testing.samplers import random_observations

CUBE = Space([ParamSpec(f"x{i}", Kind.FLOAT, low=0, high=1) for i in range(4)])
GRID = Space(
    [
        ParamSpec("n", Kind.INT, low=1, high=6),
        ParamSpec("m", Kind.INT, low=1, high=6),
        ParamSpec("opt", Kind.CATEGORICAL, values=("a", "b", "c")),
    ]
)


def cube_bowl(p: dict) -> float:
    return sum((p[f"x{i}"] - 0.3) ** 2 for i in range(4))


def grid_bowl(p: dict) -> float:
    return (p["n"] - 2) ** 2 + (p["m"] - 5) ** 2 + (0.0 if p["opt"] == "b" else 3.0)


def gp(space: Space, seed: int = 1) -> GPSampler:
    return GPSampler(SamplerContext(space, seed=seed, reserve=LocalDraws()))


def test_a_large_batch_is_thompson_sampled_spread_and_better_than_random() -> None:
    data = random_observations(CUBE, 30, cube_bowl)
    pending = [p.params for p in QuasiRandomSampler(SamplerContext(CUBE, seed=8)).suggest((), 10)]
    batch = gp(CUBE).suggest(data, 40, pending)
    assert len(batch) == 40 and len({b.draw for b in batch}) == 40
    assert {b.algorithm for b in batch} == {"gp"}
    assert {b.model_observations for b in batch} == {30}
    for b in batch:
        CUBE.check_params(b.params)
    encoded = torch.tensor(np.stack([CUBE.params_to_unit(b.params, ENCODING) for b in batch]))
    known = torch.tensor(
        np.stack([CUBE.params_to_unit(p, ENCODING) for p in [o.params for o in data] + pending])
    )
    inside = torch.cdist(encoded, encoded)
    inside.fill_diagonal_(float("inf"))
    assert inside.min() >= MIN_DISTANCE
    assert torch.cdist(encoded, known).min() >= MIN_DISTANCE
    # The posterior's samples favour the bowl's region: better than 40 random points.
    random = QuasiRandomSampler(SamplerContext(CUBE, seed=5)).suggest((), 40)
    assert np.mean([cube_bowl(b.params) for b in batch]) < np.mean(
        [cube_bowl(r.params) for r in random]
    )
    # Deterministic for the same inputs.
    again = gp(CUBE).suggest(data, 40, pending)
    assert [b.params for b in again] == [b.params for b in batch]


def test_a_large_batch_on_a_discrete_space_repeats_no_configuration() -> None:
    data = random_observations(GRID, 20, grid_bowl)
    batch = gp(GRID).suggest(data, 30)
    keys = [config_key(GRID, b.params) for b in batch]
    assert len(batch) == 30 and len(set(keys)) == 30
    assert not set(keys) & {config_key(GRID, o.params) for o in data}


def test_small_batches_keep_the_joint_qlogei(monkeypatch: Any) -> None:
    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("Thompson sampling used for a small batch")

    monkeypatch.setattr(GPSampler, "_thompson", refuse)
    data = random_observations(CUBE, 20, cube_bowl)
    pending = [p.params for p in QuasiRandomSampler(SamplerContext(CUBE, seed=8)).suggest((), 8)]
    assert len(gp(CUBE).suggest(data, 2, pending)) == 2
    with pytest.raises(AssertionError, match="Thompson"):
        gp(CUBE).suggest(data, gp_module.JOINT_MAX + 1)
    many = QuasiRandomSampler(SamplerContext(CUBE, seed=9)).suggest((), 65)
    with pytest.raises(AssertionError, match="Thompson"):
        gp(CUBE).suggest(data, 1, [p.params for p in many])


def test_thompson_candidates_skip_taken_points() -> None:
    data: list[Observation] = random_observations(GRID, 20, grid_bowl)
    batch = gp(GRID).suggest(data, 3 * 6 * 6 - 20)  # every configuration left
    keys = {config_key(GRID, b.params) for b in batch}
    assert len(keys) == len(batch) <= 3 * 6 * 6 - 20
    assert not keys & {config_key(GRID, o.params) for o in data}
