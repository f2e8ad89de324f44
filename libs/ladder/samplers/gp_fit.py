"""MAP fit of the GP's hyperparameters in plain torch.

The objective is exactly the one BoTorch's ``fit_gpytorch_mll`` maximises for the
model ``gp.fit_model`` builds (gpytorch's ``ExactMarginalLogLikelihood`` with the
model's priors, per observation): the log marginal likelihood of the standardised
targets under a constant mean and a Matérn-5/2 ARD kernel plus Gaussian noise, plus
the log-normal lengthscale prior and the Gamma noise prior. The optimiser is BoTorch's
too: scipy's L-BFGS-B on the same parameters (lengthscales, noise and constant as they
are, gpytorch's parametrisation with ``transform=None``), the same bounds, from the
same start, with the same iteration cap; so the fit ends where BoTorch's does, up to
rounding. What differs is the cost of an evaluation: a few torch operations (one
kernel matrix, one Cholesky factor) instead of gpytorch's modules, closures and lazy
tensors, whose per-call overhead was most of a fit's cost (about 5 ms per evaluation
at 100 observations in 20 columns; bench/quality/ask_cost.py).

Not done: BoTorch's retries from hyperparameters drawn from the priors when L-BFGS-B
stops abnormally (a rare line-search failure); this fit keeps where it stopped.

Tried and not kept (gp 14): L-BFGS-B on log lengthscales and log noise, as Optuna's
GPSampler does. It reached higher posteriors (in 20-D irrelevant lengthscales of 10-26
where BoTorch's capped fit stopped at about 2), and Hartmann-6 ended 3x closer to its
optimum on seeds 0-2, but Branin and the mixed problem of bench/quality 5-6x further
(median of seeds 0-2).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.optimize
import torch

from ladder.samplers.gp import matern52

# A fit whose objective has no finite value anywhere on its path keeps its start.
_FAILED = 1e300


def _log_lognormal(value: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    log_value = value.log()
    return (
        -log_value
        - scale.log()
        - 0.5 * math.log(2 * math.pi)
        - (log_value - loc) ** 2 / (2 * scale**2)
    )


def _log_gamma(value: torch.Tensor, concentration: float, rate: float) -> torch.Tensor:
    return (
        concentration * math.log(rate)
        - math.lgamma(concentration)
        + (concentration - 1) * value.log()
        - rate * value
    )


def negative_log_posterior(
    lengthscale: torch.Tensor,
    noise: torch.Tensor,
    constant: torch.Tensor,
    train_x: torch.Tensor,
    targets: torch.Tensor,
    lengthscale_prior: tuple[torch.Tensor, torch.Tensor],
    noise_prior: tuple[float, float],
) -> torch.Tensor:
    """Minus gpytorch's ``ExactMarginalLogLikelihood`` (per observation) of the
    standardised ``targets`` at these hyperparameters, priors included."""
    covariance = matern52(train_x, train_x, lengthscale)
    covariance = covariance + noise * torch.eye(len(train_x), dtype=train_x.dtype)
    factor = torch.linalg.cholesky(covariance)
    residual = (targets - constant).unsqueeze(-1)
    solved = torch.linalg.solve_triangular(factor, residual, upper=False)
    log_likelihood = (
        -0.5 * (solved**2).sum()
        - factor.diagonal().log().sum()
        - 0.5 * len(targets) * math.log(2 * math.pi)
    )
    log_prior = _log_lognormal(lengthscale, *lengthscale_prior).sum() + _log_gamma(
        noise, *noise_prior
    )
    return -(log_likelihood + log_prior) / len(targets)


def fit_map(model: torch.nn.Module, max_iterations: int) -> None:
    """Set ``model``'s (a ``gp.fit_model`` SingleTaskGP) lengthscales, noise and
    constant mean to the MAP estimate, by L-BFGS-B from their current values (at most
    ``max_iterations`` iterations). Keeps the current values when no finite objective
    is found."""
    kernel, noise_module = model.covar_module, model.likelihood.noise_covar
    train_x = model.train_inputs[0].detach()
    targets = model.train_targets.detach()
    dim = train_x.shape[-1]
    lengthscale_prior = (
        kernel.lengthscale_prior.loc.detach(),
        kernel.lengthscale_prior.scale.detach(),
    )
    noise_prior = (
        float(noise_module.noise_prior.concentration),
        float(noise_module.noise_prior.rate),
    )
    lengthscale_floor = float(kernel.raw_lengthscale_constraint.lower_bound)
    noise_floor = float(noise_module.raw_noise_constraint.lower_bound)
    start = np.concatenate(
        [
            kernel.lengthscale.detach().reshape(-1).clamp_min(lengthscale_floor).numpy(),
            [max(float(model.likelihood.noise.detach().reshape(-1)[0]), noise_floor)],
            [float(model.mean_module.constant.detach())],
        ]
    )

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        parameters = torch.from_numpy(theta).requires_grad_(True)
        try:
            loss = negative_log_posterior(
                parameters[:dim],
                parameters[dim],
                parameters[dim + 1],
                train_x,
                targets,
                lengthscale_prior,
                noise_prior,
            )
            loss.backward()
        except RuntimeError:  # Cholesky failure: steer L-BFGS-B back
            return _FAILED, np.zeros_like(theta)
        value = float(loss.detach())
        gradient = parameters.grad.numpy()
        if not math.isfinite(value) or not np.isfinite(gradient).all():
            return _FAILED, np.zeros_like(theta)
        return value, gradient

    bounds = [(lengthscale_floor, None)] * dim + [(noise_floor, None)]
    result = scipy.optimize.minimize(
        objective,
        start,
        jac=True,
        method="L-BFGS-B",
        bounds=[*bounds, (None, None)],
        options={"maxiter": max_iterations},
    )
    if not np.isfinite(result.fun) or result.fun >= _FAILED:
        return
    theta = torch.from_numpy(result.x)
    with torch.no_grad():
        kernel.lengthscale = theta[:dim].clamp_min(lengthscale_floor).reshape(1, dim)
        model.likelihood.noise = theta[dim].clamp_min(noise_floor).reshape(1)
        model.mean_module.constant = theta[dim + 1]
