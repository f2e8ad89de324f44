"""Which evaluated configuration to recommend when the objective is noisy.

The best observed value is the usual answer (Optuna's ``best_trial``, Ladder's lineage
``GetBestTrial``), and on a deterministic objective the right one. Under noise it
rewards luck: each value is the truth plus a draw, and the lowest of many draws is
biased low, so a configuration evaluated once can lose to a worse neighbour whose
draw was lucky. The model's posterior mean at each evaluated configuration pools what
its neighbours say and discounts that luck (the recommendation of BoTorch's and OSS
Vizier's noisy studies): the configuration whose mean is best is recommended.

``bench/quality/noisy_recommendation.py`` measures both on the quality suite's noisy
problems. Pure library code: the GP is ``gp.fit_model`` on ``gp``'s encoding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ladder.samplers.base import Observation
from ladder.space import Space


def best_by_posterior_mean(
    space: Space, observations: Sequence[Observation], maximize: bool
) -> Observation:
    """The observation whose configuration has the best posterior mean under a GP fitted
    to all finite observations (failed and NaN ones are left out). With fewer than two
    finite values, or a fit that fails, the best observed one. Raises ValueError when no
    observation has a finite value."""
    import torch

    from ladder.samplers.gp import ENCODING, fit_model

    finite = [o for o in observations if math.isfinite(o.value)]
    if not finite:
        raise ValueError("no observation with a finite value to recommend")
    sign = 1.0 if maximize else -1.0
    best_observed = max(finite, key=lambda o: sign * o.value)
    if len(finite) < 2 or len({o.value for o in finite}) < 2:
        return best_observed
    x = torch.tensor(
        np.stack([space.params_to_unit(o.params, ENCODING) for o in finite]), dtype=torch.float64
    )
    # BoTorch maximises: a minimised metric is negated, as the GP sampler does.
    y = torch.tensor([[sign * o.value] for o in finite], dtype=torch.float64)
    try:
        model = fit_model(x, y)
        with torch.no_grad():
            mean = model.posterior(x).mean.squeeze(-1)
    except (RuntimeError, ValueError):  # a numerically failed fit: fall back
        return best_observed
    return finite[int(torch.argmax(mean))]
