"""qLogEI of one new point with pending points, at the cost of a single-point posterior.

BoTorch's ``qLogExpectedImprovement`` with ``X_pending`` samples, at every
evaluation, the joint posterior of the candidate and every pending point: a
posterior over 1 + m points, its (1 + m)-square Cholesky factor, and a
triangular solve against the training factor with 1 + m columns, per candidate,
hundreds of times per ask. That was three quarters of a single suggestion's cost
with 7 pending points (bench/quality/ask_cost.py).

The pending points do not move, so their part is drawn once per ask (the way
Optuna's GPSampler handles running trials): with R the pending points, mu_R and
C_R their posterior mean and covariance and L_R its Cholesky factor, fantasy
sample s is f_R = mu_R + L_R z_s. A candidate x, given f_R, is Gaussian with

    mean  mu_x + w . z_s,    variance  var_x - w . w,    w = L_R^-1 c(x, R),

where c(x, R) is the posterior cross-covariance: one extra m-vector per
candidate. The joint draw (f_R, f_x) has exactly the distribution BoTorch
samples, so the acquisition is the same qLogEI (same smoothed maximum over the
batch, same mean over samples); only its Monte-Carlo noise differs.
"""

from __future__ import annotations

import torch
from botorch.acquisition.logei import _log_improvement, qLogExpectedImprovement
from botorch.sampling import SobolQMCNormalSampler
from botorch.utils.safe_math import fatmax, logmeanexp
from botorch.utils.sampling import draw_sobol_normal_samples
from linear_operator.utils.cholesky import psd_safe_cholesky

from ladder.samplers.gp import PosteriorCache, matern52

# Floor of a conditional variance (standardised units), as the jitter of the
# fast posterior: keeps the square root's gradient finite at a training point.
MIN_VARIANCE = 1e-9


class PendingLogEI(qLogExpectedImprovement):
    """qLogEI of single candidates (``batch x 1 x d``) jointly with the fixed
    ``pending`` points (``m x d``, possibly none) over ``samples`` quasi-random
    draws seeded by ``seed``. ``model`` is a ``gp.fast_posterior_model``."""

    def __init__(
        self,
        model: torch.nn.Module,
        best_f: torch.Tensor,
        pending: torch.Tensor,
        samples: int,
        seed: int,
    ) -> None:
        super().__init__(
            model, best_f=best_f, sampler=SobolQMCNormalSampler(torch.Size([samples]), seed=seed)
        )
        cache: PosteriorCache = model.cache
        self._cache = cache
        self._pending = pending
        base = draw_sobol_normal_samples(d=len(pending) + 1, n=samples, seed=seed).to(pending)
        self._z_pending, self._z_new = base[:, :-1], base[:, -1]
        if len(pending):
            # Posterior of the pending points, and L^-1 K(train, pending) for the
            # candidates' cross-covariance with them.
            cross = matern52(cache.train_x, pending, cache.lengthscale)
            self._solved_pending = torch.linalg.solve_triangular(cache.factor, cross, upper=False)
            mean = cache.constant + cross.transpose(-1, -2) @ cache.weights
            covariance = (
                matern52(pending, pending, cache.lengthscale)
                - self._solved_pending.transpose(-1, -2) @ self._solved_pending
            )
            covariance = covariance + MIN_VARIANCE * torch.eye(len(pending), dtype=pending.dtype)
            self._pending_factor = psd_safe_cholesky(covariance, max_tries=6)
            fantasy = mean + self._z_pending @ self._pending_factor.transpose(-1, -2)
            # samples x m: the pending points' log improvements, fixed for the ask
            self._pending_improvement = _log_improvement(
                cache.shift + cache.scale * fantasy, self.best_f, self.tau_relu, True
            )

    def forward(self, X: torch.Tensor) -> torch.Tensor:  # noqa: N803
        """qLogEI of each candidate of ``X`` (``batch x 1 x d``): BoTorch's
        computation (log fat-plus improvement per sample and point, fat-max over the
        candidate and the pending points, log-mean-exp over samples) without its
        generic machinery, and with the pending points' improvements computed once
        per ask (they do not depend on the candidate). The acquisition optimiser
        evaluates this a few dozen times per ask, and BoTorch's wrappers were about
        half of each evaluation."""
        new = self._new_samples(X)  # samples x batch
        improvement = _log_improvement(new, self.best_f, self.tau_relu, True).unsqueeze(-1)
        if len(self._pending):
            pending = self._pending_improvement.unsqueeze(1).expand(
                *new.shape, len(self._pending)
            )
            improvement = torch.cat([improvement, pending], dim=-1)
        return logmeanexp(fatmax(improvement, dim=-1, tau=self.tau_max), dim=0)

    def _new_samples(self, X: torch.Tensor) -> torch.Tensor:  # noqa: N803
        """The candidates' draws given the pending points' (``samples x batch``)."""
        if X.shape[-2] != 1:
            raise ValueError("PendingLogEI scores single candidates (q = 1)")
        cache = self._cache
        x = X.squeeze(-2)  # batch x d
        cross = matern52(x, cache.train_x, cache.lengthscale)  # batch x n
        mean = cache.constant + cross @ cache.weights  # batch
        solved = torch.linalg.solve_triangular(cache.factor, cross.transpose(-1, -2), upper=False)
        variance = 1.0 - (solved**2).sum(dim=-2)  # unit-scale Matérn: k(x, x) = 1
        shape = (len(self._z_new), *mean.shape)
        mean = mean.unsqueeze(0).expand(shape)
        if len(self._pending):
            with_pending = (
                matern52(x, self._pending, cache.lengthscale)
                - solved.transpose(-1, -2) @ self._solved_pending
            )  # batch x m
            w = torch.linalg.solve_triangular(
                self._pending_factor, with_pending.transpose(-1, -2), upper=False
            )  # m x batch
            mean = mean + self._z_pending @ w
            variance = variance - (w**2).sum(dim=-2)
        std = (variance.clamp_min(0) + MIN_VARIANCE).sqrt()
        return cache.shift + cache.scale * (mean + std * self._z_new.unsqueeze(-1))
