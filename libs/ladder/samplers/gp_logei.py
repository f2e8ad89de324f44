"""The single-point qLogEI of ``gp_pending.PendingLogEI`` and its gradient, in NumPy.

The acquisition optimiser evaluates the acquisition and its gradient a few dozen
times per ask on a handful of candidates; at that size each torch operation costs
its dispatch (and autograd its graph and backward pass), not its arithmetic, and
torch's forward and backward were two thirds of a 20-D ask
(bench/quality/ask_cost.py). The same function in NumPy, with the gradient
derived by hand, costs a fraction of that per evaluation.

The function is BoTorch's (``qLogExpectedImprovement``, ``fat=True``), term by term:

    y_s      = shift + scale * (mu_x + w . zR_s + sd_x * z_s)        (gp_pending.py)
    l_s      = log fatplus(y_s - best_f; tau_relu)                   (log improvement)
    m_s      = fatmax(l_s, pending log improvements_s; tau_max)      (over the batch)
    value    = logmeanexp_s(m_s)

with ``fatplus(x; t) = t * (softplus(x / t) + 0.1 / (1 + (x / t)^2))`` and
``fatmax(v; t) = M + t * log sum_j pareto(-(v_j - M) / t)``, ``M = max_j v_j``,
``pareto(u) = 2 / (2 + 2u + u^2)`` (BoTorch's ``safe_math`` with alpha = 2). The
unit test checks the values against BoTorch's qLogEI and the gradient against
torch's autograd of ``PendingLogEI``'s torch computation.

Distances use the expansion |u|^2 + |t|^2 - 2 u.t (as torch's ``cdist`` does for
more than 25 rows), so no (candidates x training points x dim) array is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular

SQRT5 = math.sqrt(5.0)
# BoTorch's fatplus: softplus plus this multiple of a Cauchy density (monotone, convex).
FATPLUS_ALPHA = 0.1
# Floor of a conditional variance (standardised units), as the jitter of the fast
# posterior: keeps the square root's gradient finite at a training point.
MIN_VARIANCE = 1e-9
# torch's cdist clamp: a distance below it counts as this (keeps sqrt's gradient finite).
MIN_DISTANCE = 1e-15


@dataclass(frozen=True)
class LogEITerms:
    """Everything of one ask's acquisition that does not depend on the candidate.

    ``train`` and ``pending`` are divided by the lengthscales; ``factor`` is the
    training Cholesky factor, ``weights`` its solve for the centred targets;
    ``pending_solved`` = factor^-1 K(train, pending), ``pending_factor`` the
    Cholesky factor of the pending points' posterior covariance; ``z_pending``
    (samples x m) and ``z_new`` (samples) the quasi-random normal draws; and
    ``pending_improvement`` (samples x m) the pending points' log improvements."""

    lengthscale: np.ndarray
    train: np.ndarray
    train_norms: np.ndarray
    constant: float
    factor: np.ndarray
    weights: np.ndarray
    shift: float
    scale: float
    best_f: float
    tau_relu: float
    tau_max: float
    pending: np.ndarray
    pending_norms: np.ndarray
    pending_solved: np.ndarray
    pending_factor: np.ndarray
    z_pending: np.ndarray
    z_new: np.ndarray
    pending_improvement: np.ndarray


def _matern52(u: np.ndarray, t: np.ndarray, t_norms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Matérn-5/2 (unit output scale) between rows of ``u`` and ``t`` (both already
    divided by the lengthscales), and ``-dk/dr / r`` for the gradient."""
    squared = (u * u).sum(axis=1)[:, None] + t_norms[None, :] - 2.0 * (u @ t.T)
    distance = np.sqrt(np.maximum(squared, 0.0))
    distance = np.maximum(distance, MIN_DISTANCE)
    scaled = SQRT5 * distance
    decay = np.exp(-scaled)
    kernel = (1.0 + scaled + scaled * scaled / 3.0) * decay
    # d/dr (1 + s + s^2/3) e^-s with s = sqrt5 r is -(5/3) r (1 + s) e^-s.
    slope_over_r = (5.0 / 3.0) * (1.0 + scaled) * decay
    return kernel, slope_over_r


def log_fatplus(x: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """BoTorch's ``log_fatplus`` and its derivative."""
    v = x / tau
    cauchy = 1.0 / (1.0 + v * v)
    fat = np.logaddexp(0.0, v) + FATPLUS_ALPHA * cauchy
    sigmoid = 0.5 * (1.0 + np.tanh(0.5 * v))
    slope = sigmoid - 2.0 * FATPLUS_ALPHA * v * cauchy * cauchy
    return np.log(tau * fat), slope / (fat * tau)


def fatmax(values: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """BoTorch's ``fatmax`` over the last axis (alpha = 2) and its gradient
    (including the path through the maximum, as torch's ``amax`` passes it)."""
    top = values.max(axis=-1, keepdims=True)
    u = (top - values) / tau
    denominator = 2.0 + 2.0 * u + u * u
    pareto = 2.0 / denominator
    total = pareto.sum(axis=-1, keepdims=True)
    result = top + tau * np.log(total)
    # d pareto / du = -2 (2 + 2u) / denominator^2; du/dv_j = -1/tau, du/dM = 1/tau.
    d_pareto = -2.0 * (2.0 + 2.0 * u) / (denominator * denominator)
    direct = -d_pareto / total
    through_top = 1.0 + (d_pareto / total).sum(axis=-1, keepdims=True)
    is_top = values == top
    share = is_top / is_top.sum(axis=-1, keepdims=True)
    return result[..., 0], direct + share * through_top


def logmeanexp(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log mean exp over axis 0 and its gradient (softmax weights)."""
    top = values.max(axis=0, keepdims=True)
    exp = np.exp(values - top)
    total = exp.sum(axis=0, keepdims=True)
    return (top + np.log(total))[0] - math.log(len(values)), exp / total


def value_and_grad(
    terms: LogEITerms, x: np.ndarray, need_grad: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """The acquisition of each row of ``x`` (candidates x dim, unit cube) and, with
    ``need_grad``, its gradient with respect to ``x``."""
    u = x / terms.lengthscale
    kernel, slope = _matern52(u, terms.train, terms.train_norms)  # b x n
    mean = terms.constant + kernel @ terms.weights  # b
    solved = solve_triangular(terms.factor, kernel.T, lower=True, check_finite=False)  # n x b
    variance = 1.0 - (solved * solved).sum(axis=0)
    m = len(terms.pending)
    if m:
        k_pending, slope_pending = _matern52(u, terms.pending, terms.pending_norms)  # b x m
        with_pending = k_pending - solved.T @ terms.pending_solved  # b x m
        w = solve_triangular(
            terms.pending_factor, with_pending.T, lower=True, check_finite=False
        )  # m x b
        sample_mean = mean[None, :] + terms.z_pending @ w  # s x b
        variance = variance - (w * w).sum(axis=0)
    else:
        sample_mean = np.broadcast_to(mean[None, :], (len(terms.z_new), len(mean)))
    positive = variance > 0
    std = np.sqrt(np.where(positive, variance, 0.0) + MIN_VARIANCE)
    y = terms.shift + terms.scale * (sample_mean + std[None, :] * terms.z_new[:, None])
    improvement, d_improvement = log_fatplus(y - terms.best_f, terms.tau_relu)  # s x b
    if m:
        stacked = np.concatenate(
            [
                improvement[:, :, None],
                np.broadcast_to(
                    terms.pending_improvement[:, None, :], (*improvement.shape, m)
                ),
            ],
            axis=-1,
        )
        best, d_best = fatmax(stacked, terms.tau_max)  # s x b, s x b x (1 + m)
        d_best = d_best[..., 0]
    else:
        best, d_best = improvement, np.ones_like(improvement)
    value, d_value = logmeanexp(best)  # b, s x b
    if not need_grad:
        return value, None
    g_y = d_value * d_best * d_improvement * terms.scale  # s x b, d value / d (y / scale)
    g_mean = g_y.sum(axis=0)  # b
    g_std = (g_y * terms.z_new[:, None]).sum(axis=0)
    g_variance = np.where(positive, 0.5 * g_std / std, 0.0)
    g_kernel = g_mean[:, None] * terms.weights[None, :]  # b x n
    g_solved = -2.0 * solved * g_variance[None, :]  # n x b
    if m:
        g_w = terms.z_pending.T @ g_y - 2.0 * w * g_variance[None, :]  # m x b
        g_with = solve_triangular(
            terms.pending_factor, g_w, lower=True, trans="T", check_finite=False
        ).T  # b x m
        g_solved -= terms.pending_solved @ g_with.T
        coefficient = -g_with * slope_pending  # b x m: d value / d r times 1 / r
        g_u = coefficient.sum(axis=1)[:, None] * u - coefficient @ terms.pending
    else:
        g_u = np.zeros_like(u)
    g_kernel += solve_triangular(
        terms.factor, g_solved, lower=True, trans="T", check_finite=False
    ).T
    coefficient = -g_kernel * slope
    g_u += coefficient.sum(axis=1)[:, None] * u - coefficient @ terms.train
    return value, g_u / terms.lengthscale


def maximise(
    terms: LogEITerms, starts: np.ndarray, scale: np.ndarray, max_iterations: int
) -> np.ndarray:
    """Multi-start L-BFGS-B (BoTorch's batched implementation, as ``optimize_acqf``
    runs it) of the acquisition from each row of ``starts`` (unit cube), in
    ``z = x / scale`` (gp.py, "Optimisation of the acquisition"); the optimised
    points, clamped to the unit cube. The same optimiser ``optimize_acqf`` would
    run, without its per-evaluation conversions between NumPy and torch."""
    from botorch.optim.batched_lbfgs_b import fmin_l_bfgs_b_batched
    from threadpoolctl import threadpool_limits

    upper = 1.0 / scale

    def negative(z: np.ndarray, batch_indices: list[int] | None = None) -> tuple:
        value, grad = value_and_grad(terms, z * scale)
        return -value, -(grad * scale)

    start = np.clip(starts / scale, 0.0, upper)
    with threadpool_limits(limits=1, user_api="blas"):
        optimised, _, _ = fmin_l_bfgs_b_batched(
            func=negative,
            x0=start,
            bounds=[(0.0, float(u)) for u in upper],
            maxiter=max_iterations,
            pass_batch_indices=True,
        )
    return np.clip(np.asarray(optimised).reshape(starts.shape) * scale, 0.0, 1.0)
