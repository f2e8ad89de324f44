"""Refits between hyperparameter fits (gp.py module docstring): above INCREMENTAL_MIN
points the GP keeps its hyperparameters until the fidelity grew by REFIT_GROWTH, and is
still conditioned on every new observation."""

import torch
from ladder.samplers import LocalDraws, SamplerContext
from ladder.samplers.gp import INCREMENTAL_MIN, REFIT_GROWTH, GPSampler, full_fit_due
from ladder.space import Kind, ParamSpec, Space
from ladder.testing.samplers import random_observations

PLANE = Space(
    [ParamSpec("x", Kind.FLOAT, low=0, high=1), ParamSpec("y", Kind.FLOAT, low=-2, high=2)]
)


def bowl(p: dict) -> float:
    return (p["x"] - 0.3) ** 2 + (p["y"] - 1.0) ** 2


def test_full_fit_rule() -> None:
    assert full_fit_due(200, None)  # never fitted
    assert full_fit_due(INCREMENTAL_MIN - 1, INCREMENTAL_MIN - 2)  # small: every refit
    assert not full_fit_due(210, 200)
    grown = int(200 * (1 + REFIT_GROWTH))
    assert not full_fit_due(grown - 1, 200)
    assert full_fit_due(grown, 200)
    assert full_fit_due(150, 200)  # fewer points than at the fit: a different data set


def _hyper(sampler: GPSampler) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in sampler._hyperparameters[None].items()}


def test_kept_hyperparameters_between_fits_and_the_new_data_still_seen() -> None:
    data = random_observations(PLANE, 260, bowl)
    sampler = GPSampler(SamplerContext(PLANE, seed=3, reserve=LocalDraws()))
    first = INCREMENTAL_MIN + 20
    assert sampler.suggest(data[:first], 1)[0].model_observations == first
    fitted = _hyper(sampler)

    # A few dozen more points: conditioned on all of them, hyperparameters as they were.
    more = first + 30
    assert sampler.suggest(data[:more], 1)[0].model_observations == more
    kept = _hyper(sampler)
    assert kept.keys() == fitted.keys()
    assert all(torch.equal(kept[k], fitted[k]) for k in fitted)
    assert sampler._fitted_size[None] == first

    # Grown by REFIT_GROWTH since the fit: fitted again, from where they were.
    grown = int(first * (1 + REFIT_GROWTH)) + 1
    assert sampler.suggest(data[:grown], 1)[0].model_observations == grown
    assert sampler._fitted_size[None] == grown
    refitted = _hyper(sampler)
    assert any(not torch.equal(refitted[k], fitted[k]) for k in fitted)


def test_a_small_study_fits_its_hyperparameters_at_every_refit() -> None:
    data = random_observations(PLANE, 40, bowl)
    sampler = GPSampler(SamplerContext(PLANE, seed=3, reserve=LocalDraws()))
    sampler.suggest(data[:30], 1)
    sampler.suggest(data[:31], 1)
    assert sampler._fitted_size[None] == 31
