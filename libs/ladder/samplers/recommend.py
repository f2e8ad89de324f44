"""Which evaluated configuration to recommend when the objective is noisy.

The best observed value is the usual answer (Optuna's ``best_trial``, Ladder's lineage
``GetBestTrial``), and on a deterministic objective the right one. Under noise it
rewards luck: each value is the truth plus a draw, and the lowest of many draws is
biased low, so a configuration evaluated once can lose to a worse neighbour whose
draw was lucky. The model's posterior mean at each evaluated configuration pools what
its neighbours say and discounts that luck (Ax's ``get_best_parameterization`` uses the
model's predictions the same way by default): the configuration whose mean is best is
recommended.

``bench/quality/noisy_recommendation.py`` compares both on the quality suite's noisy
problems. Pure library code: the GP is ``gp.fit_model`` on ``gp``'s encoding, fitted to
at most ``gp.MAX_FIT_POINTS`` observations (``fit_points``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ladder.samplers.base import Observation
from ladder.space import Space

# Configurations a large study's recommendation is chosen among (the best by value).
CANDIDATES = 64


def best_by_posterior_mean(
    space: Space, observations: Sequence[Observation], maximize: bool
) -> Observation:
    """The observation whose configuration has the best posterior mean under a GP fitted
    to the finite observations (failed and NaN ones, and any whose params are not a
    point of ``space``, as after a change of the study's space, are left out), among the
    best ``CANDIDATES`` by value beyond ``gp.MAX_FIT_POINTS`` of them (``fit_points``).
    With fewer than two distinct finite values, or a fit that fails, the best observed
    one. Raises ValueError when no observation is left."""
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
        model = gp.fit_model(x, y)
        with torch.no_grad():
            mean = model.posterior(torch.tensor(encoded[candidates])).mean.squeeze(-1)
    except (RuntimeError, ValueError):  # a numerically failed fit: fall back
        return best_observed
    return finite[candidates[int(torch.argmax(mean))]]


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

