"""The noisy-objective recommendation: the best posterior mean, not the luckiest value."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ladder.samplers.base import Observation
from ladder.samplers.recommend import best_by_posterior_mean, fit_points
from ladder.space import Kind, ParamSpec, Space

SPACE = Space([ParamSpec("x", Kind.FLOAT, low=0.0, high=1.0)])


def noisy_bowl(lucky_x: float, lucky_draw: float, sign: float) -> list[Observation]:
    """(x - 0.3)^2 on 21 points with N(0, 0.02^2) noise, and the point at ``lucky_x``
    given a draw of ``lucky_draw``: the best observed value but far from the optimum.
    ``sign`` -1 turns it into a maximised metric."""
    rng = np.random.default_rng(0)
    out = []
    for i, x in enumerate(np.linspace(0.0, 1.0, 21)):
        noise = lucky_draw if math.isclose(x, lucky_x) else rng.normal(0.0, 0.02)
        out.append(Observation(f"t{i}", {"x": float(x)}, sign * ((x - 0.3) ** 2 + noise)))
    return out


@pytest.mark.parametrize("maximize", [False, True])
def test_a_lucky_draw_far_from_the_optimum_is_not_recommended(maximize: bool) -> None:
    observations = noisy_bowl(lucky_x=0.7, lucky_draw=-0.2, sign=-1.0 if maximize else 1.0)
    lucky = max(observations, key=lambda o: o.value if maximize else -o.value)
    assert lucky.params["x"] == pytest.approx(0.7)  # what the best observed value picks
    picked = best_by_posterior_mean(SPACE, observations, maximize)
    assert abs(picked.params["x"] - 0.3) < 0.11  # the optimum or a grid neighbour


def test_failed_and_outside_trials_are_left_out_and_too_few_give_the_best_observed() -> None:
    failed = Observation.of_failure("f", {"x": 0.3}, 1)
    one = Observation("a", {"x": 0.9}, 2.0)
    assert best_by_posterior_mean(SPACE, [failed, one], maximize=False) == one
    with pytest.raises(ValueError, match="no observation"):
        best_by_posterior_mean(SPACE, [failed], maximize=False)
    # A trial of the study's former space (x was up to 2): left out, not a crash.
    outside = Observation("old", {"x": 1.5}, -5.0)
    assert best_by_posterior_mean(SPACE, [outside, one], maximize=False) == one


def test_without_noise_the_best_observed_configuration_is_recommended() -> None:
    observations = [
        Observation(f"t{i}", {"x": float(x)}, (x - 0.3) ** 2)
        for i, x in enumerate(np.linspace(0.0, 1.0, 11))
    ]
    picked = best_by_posterior_mean(SPACE, observations, maximize=False)
    assert picked.params["x"] == pytest.approx(0.3)


def test_a_large_study_is_fitted_on_its_best_points_neighbourhoods_and_skips_the_lucky_draw(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ladder.samplers import gp

    monkeypatch.setattr(gp, "MAX_FIT_POINTS", 12)
    observations = noisy_bowl(lucky_x=0.7, lucky_draw=-0.2, sign=1.0)
    picked = best_by_posterior_mean(SPACE, observations, maximize=False)
    assert abs(picked.params["x"] - 0.3) < 0.11  # the optimum or a grid neighbour


def test_fit_points_keep_the_candidates_neighbours_within_the_limit() -> None:
    encoded = np.linspace(0.0, 1.0, 41)[:, None]
    gains = [-abs(x - 0.5) for x in encoded[:, 0]]
    gains[36] = 1.0  # a lucky draw at 0.9
    fitted, candidates = fit_points(encoded, gains, limit=12)
    assert candidates[0] == 36 and set(candidates) <= set(fitted)
    assert {35, 37} <= set(fitted)  # the lucky draw's neighbours tell it apart
    assert len(fitted) <= 12 and fit_points(encoded, gains, limit=50)[0] == list(range(41))


def fitted_bowl() -> tuple[object, torch.Tensor]:
    """A GP fitted to ``noisy_bowl`` and its training targets (standardised)."""
    from ladder.samplers import gp

    observations = noisy_bowl(lucky_x=0.7, lucky_draw=0.0, sign=1.0)
    x = torch.tensor([[o.params["x"]] for o in observations], dtype=torch.float64)
    y = torch.tensor([[-o.value] for o in observations], dtype=torch.float64)
    model = gp.fit_model(x, y)
    return model, model.train_targets


def test_a_calibrated_model_keeps_its_posterior_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    from ladder.samplers import recommend

    model, _ = fitted_bowl()
    monkeypatch.setattr(recommend, "CHI2_1_MEDIAN", math.inf)  # residuals never above 1
    with torch.no_grad():
        mean = model.posterior(model.train_inputs[0]).mean.squeeze(-1)
    transform = model.outcome_transform
    standardised = (mean - transform.means.squeeze()) / transform.stdvs.squeeze()
    calibrated = recommend.loo_calibrated_means(model)
    assert torch.allclose(calibrated, standardised, atol=1e-6)


def test_an_overconfident_model_leans_on_each_points_own_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ladder.samplers import recommend

    model, observed = fitted_bowl()
    posterior = recommend.loo_calibrated_means(model)
    monkeypatch.setattr(recommend, "CHI2_1_MEDIAN", 1e-9)  # residuals far above the model's
    leaning = recommend.loo_calibrated_means(model)
    assert torch.all((leaning - observed).abs() <= (posterior - observed).abs() + 1e-12)
    assert torch.allclose(leaning, observed, atol=1e-3)
    assert not torch.allclose(posterior, observed, atol=1e-3)
