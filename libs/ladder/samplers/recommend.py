"""Which evaluated configuration to recommend when the objective is noisy.

The best observed value is the usual answer (Optuna's ``best_trial``, Ladder's lineage
``GetBestTrial``), and on a deterministic objective the right one. Under noise it
rewards luck: each value is the truth plus a draw, and the lowest of many draws is
biased low, so a configuration evaluated once can lose to a worse neighbour whose
draw was lucky. The model's posterior mean at each evaluated configuration pools what
its neighbours say and discounts that luck (Ax's ``get_best_parameterization`` uses the
model's predictions the same way by default): the configuration whose mean is best is
recommended.

At an evaluated point the posterior mean is its own value and the prediction its
neighbours make of it (the leave-one-out mean) weighed by their precisions: the noise,
and the GP's claimed error of that prediction. On a rough surface, such as a table of
real training runs whose grid neighbours differ more than a stationary kernel expects,
the claimed error can be too small, and the neighbours then outweigh the point's own
value.
``loo_calibrated_means`` scales the claimed leave-one-out variances by how far off they
are on the study's own points: the median squared standardised leave-one-out residual,
over its value for a calibrated model (a chi-square median, so that one lucky draw, the
case this is for, cannot inflate it). A calibrated or overcautious model keeps its
posterior mean exactly.

``bench/quality/recommendation_holdout.py`` compared the rules on seeds the quality
suite does not use; ``bench/quality/noisy_recommendation.py`` compares this one with the
best observed value on the suite's noisy problems. Pure library code: the GP is
``gp.fit_model`` on ``gp``'s encoding, fitted to at most ``gp.MAX_FIT_POINTS``
observations (``fit_points``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import chi2

from ladder.samplers.base import Observation
from ladder.space import Space

if TYPE_CHECKING:
    import torch

# Configurations a large study's recommendation is chosen among (the best by value).
CANDIDATES = 64
# Bumped when the rule changes (the quality suite redoes Ladder's runs on noisy problems).
VERSION = 2


def best_by_posterior_mean(
    space: Space, observations: Sequence[Observation], maximize: bool
) -> Observation:
    """The observation whose configuration has the best posterior mean under a GP fitted
    to the finite observations, with its leave-one-out variances calibrated
    (``loo_calibrated_means``). Failed and NaN observations, and any whose params are not
    a point of ``space`` (after a change of the study's space), are left out. Beyond
    ``gp.MAX_FIT_POINTS`` of them, chosen among the best ``CANDIDATES`` by value
    (``fit_points``). With fewer than two distinct finite values, or a fit that fails,
    the best observed one. Raises ValueError when no observation is left."""
    import torch

    from ladder.samplers import gp

    finite = [o for o in observations if math.isfinite(o.value) and space.contains(o.params)]
    if not finite:
        raise ValueError("no observation with a finite value in the space to recommend")
    sign = 1.0 if maximize else -1.0
    best_observed = max(finite, key=lambda o: sign * o.value)
    if len(finite) < 2 or len({o.value for o in finite}) < 2:
        return best_observed
    encoded = np.stack([space.params_to_unit(o.params, gp.ENCODING) for o in finite])
    fitted, candidates = fit_points(encoded, [sign * o.value for o in finite], gp.MAX_FIT_POINTS)
    x = torch.tensor(encoded[fitted], dtype=torch.float64)
    # BoTorch maximises: a minimised metric is negated, as the GP sampler does.
    y = torch.tensor([[sign * finite[i].value] for i in fitted], dtype=torch.float64)
    try:
        mean = loo_calibrated_means(gp.fit_model(x, y))
    except (RuntimeError, ValueError):  # a numerically failed fit: fall back
        return best_observed
    position = {index: row for row, index in enumerate(fitted)}  # candidates are fitted
    return finite[max(candidates, key=lambda i: float(mean[position[i]]))]


# The median of a chi-square variable with one degree of freedom: the median squared
# standardised leave-one-out residual of a calibrated model.
CHI2_1_MEDIAN = float(chi2.median(1))


def loo_calibrated_means(model: object) -> torch.Tensor:
    """Per training point of ``model`` (a ``gp.fit_model`` GP, in its standardised
    units), its observed value and its leave-one-out mean combined by their precisions:
    the noise variance, and the leave-one-out variance scaled up by ``max(1, median of
    squared standardised leave-one-out residuals / CHI2_1_MEDIAN)``. With a scale of 1,
    the posterior mean at the training points. The leave-one-out terms are the closed
    form of Rasmussen & Williams (eq. 5.12), with the fitted hyperparameters."""
    import torch

    with torch.no_grad():
        x, y = model.train_inputs[0], model.train_targets  # type: ignore[attr-defined]
        noise = model.likelihood.noise.reshape(-1)[0]  # type: ignore[attr-defined]
        covariance = model.covar_module(x).to_dense()  # type: ignore[attr-defined]
        covariance = covariance + noise * torch.eye(len(y), dtype=covariance.dtype)
        inverse = torch.cholesky_inverse(torch.linalg.cholesky(covariance))
        weights = inverse @ (y - model.mean_module(x))  # type: ignore[attr-defined]
        precision = torch.diagonal(inverse)
        loo_mean = y - weights / precision
        loo_variance = 1.0 / precision  # of a new observation there: noise included
        residual = torch.median(weights**2 / precision) / CHI2_1_MEDIAN
        scale = max(1.0, float(residual))
        latent = torch.clamp(scale * loo_variance - noise, min=torch.finfo(y.dtype).tiny)
        return (y / noise + loo_mean / latent) / (1.0 / noise + 1.0 / latent)


def fit_points(
    encoded: np.ndarray, gains: Sequence[float], limit: int
) -> tuple[list[int], list[int]]:
    """(indices to fit, indices to choose among). All of them while there are at most
    ``limit``; beyond, a fit's cost being cubic in its points, the ``CANDIDATES`` best by
    gain (value, higher is better) with their nearest neighbours in the encoded space
    (what tells a lucky draw from a good region), the rest of ``limit`` spread evenly
    over the others."""
    everything = list(range(len(gains)))
    if len(gains) <= limit:
        return everything, everything
    candidates = sorted(everything, key=lambda i: -gains[i])[: min(CANDIDATES, limit // 4)]
    per_candidate = max(1, (limit // 2) // len(candidates))
    chosen = set(candidates)
    for i in candidates:
        distance = np.linalg.norm(encoded - encoded[i], axis=1)
        chosen.update(int(j) for j in np.argsort(distance, kind="stable")[: per_candidate + 1])
    rest = [i for i in everything if i not in chosen]
    room = limit - len(chosen)
    if room > 0 and rest:
        chosen.update(rest[int(k)] for k in np.linspace(0, len(rest) - 1, room).round())
    return sorted(chosen), candidates

