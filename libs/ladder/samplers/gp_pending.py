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

The per-candidate part and its gradient are computed by ``gp_logei`` in NumPy
(the acquisition optimiser calls it with a handful of candidates at a time,
where torch's per-operation and autograd overhead was most of the cost).
"""

from __future__ import annotations

import numpy as np
import torch
from botorch.acquisition.logei import qLogExpectedImprovement
from botorch.sampling import SobolQMCNormalSampler
from botorch.utils.sampling import draw_sobol_normal_samples
from linear_operator.utils.cholesky import psd_safe_cholesky

from ladder.samplers import gp_logei
from ladder.samplers.gp import PosteriorCache, matern52

MIN_VARIANCE = gp_logei.MIN_VARIANCE


class PendingLogEI(qLogExpectedImprovement):
    """qLogEI of single candidates (``batch x 1 x d``) jointly with the fixed
    ``pending`` points (``m x d``, possibly none) over ``samples`` quasi-random
    draws seeded by ``seed``. ``model`` is a ``gp.fast_posterior_model``. Values
    and gradients come from ``gp_logei`` (NumPy); ``terms`` holds what does not
    depend on the candidate, for optimisers that call ``gp_logei`` directly."""

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
        base = draw_sobol_normal_samples(d=len(pending) + 1, n=samples, seed=seed).to(pending)
        z_pending, z_new = base[:, :-1], base[:, -1]
        lengthscale = cache.lengthscale.reshape(-1)
        m = len(pending)
        solved_pending = cache.train_x.new_zeros(len(cache.train_x), m)
        pending_factor = cache.train_x.new_zeros(m, m)
        improvement = np.zeros((samples, m))
        if m:
            # Posterior of the pending points, and L^-1 K(train, pending) for the
            # candidates' cross-covariance with them.
            cross = matern52(cache.train_x, pending, cache.lengthscale)
            solved_pending = torch.linalg.solve_triangular(cache.factor, cross, upper=False)
            mean = cache.constant + cross.transpose(-1, -2) @ cache.weights
            covariance = (
                matern52(pending, pending, cache.lengthscale)
                - solved_pending.transpose(-1, -2) @ solved_pending
            )
            covariance = covariance + MIN_VARIANCE * torch.eye(m, dtype=pending.dtype)
            pending_factor = psd_safe_cholesky(covariance, max_tries=6)
            fantasy = mean + z_pending @ pending_factor.transpose(-1, -2)
            # samples x m: the pending points' log improvements, fixed for the ask
            improvement, _ = gp_logei.log_fatplus(
                (cache.shift + cache.scale * fantasy - self.best_f).numpy(), self.tau_relu
            )
        train = (cache.train_x / lengthscale).numpy()
        scaled_pending = (pending / lengthscale).numpy()
        self.terms = gp_logei.LogEITerms(
            lengthscale=lengthscale.numpy(),
            train=train,
            train_norms=(train * train).sum(axis=1),
            constant=float(cache.constant),
            factor=cache.factor.numpy(),
            weights=cache.weights.numpy(),
            shift=float(cache.shift),
            scale=float(cache.scale),
            best_f=float(self.best_f),
            tau_relu=float(self.tau_relu),
            tau_max=float(self.tau_max),
            pending=scaled_pending,
            pending_norms=(scaled_pending * scaled_pending).sum(axis=1),
            pending_solved=solved_pending.numpy(),
            pending_factor=pending_factor.numpy(),
            z_pending=z_pending.numpy(),
            z_new=z_new.numpy(),
            pending_improvement=improvement,
        )

    def forward(self, X: torch.Tensor) -> torch.Tensor:  # noqa: N803
        """qLogEI of each candidate of ``X`` (``batch x 1 x d``), differentiable."""
        if X.shape[-2] != 1:
            raise ValueError("PendingLogEI scores single candidates (q = 1)")
        x = X.reshape(-1, X.shape[-1])
        if not (torch.is_grad_enabled() and x.requires_grad):
            value, _ = gp_logei.value_and_grad(self.terms, x.detach().numpy(), need_grad=False)
            return torch.from_numpy(value).reshape(X.shape[:-2])
        return _LogEI.apply(x, self.terms).reshape(X.shape[:-2])


class _LogEI(torch.autograd.Function):
    """``gp_logei.value_and_grad`` as a torch function (its gradient by hand)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, terms: gp_logei.LogEITerms) -> torch.Tensor:  # noqa: ANN001
        value, grad = gp_logei.value_and_grad(terms, x.detach().numpy())
        ctx.save_for_backward(torch.from_numpy(grad))
        return torch.from_numpy(value)

    @staticmethod
    def backward(ctx, upstream: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        (grad,) = ctx.saved_tensors
        return upstream.unsqueeze(-1) * grad, None
