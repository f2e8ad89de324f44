"""Gaussian-process Bayesian optimisation (BoTorch) with pending-aware batches.

Model. ``SingleTaskGP`` on the ``ONE_HOT`` unit-cube encoding of ``ladder.space``:
floats linear or log as the space says, ints and ordinals as one continuous
coordinate (decoded by rounding / binning), categoricals one column per choice
(no invented order), inactive conditional children at the space's neutral
filler. BoTorch's default kernel is Matérn-5/2 with ARD lengthscales and a
learned noise; y is standardised by the model's ``Standardize`` transform.
Values are negated for MINIMIZE studies because BoTorch maximises.

Acquisition. ``qLogNoisyExpectedImprovement`` with ``X_pending`` = the encoded
points other workers are evaluating right now: BoTorch fantasises their
outcomes, so a new suggestion does not duplicate a running one. ``count > 1``
asks for a joint q-batch. The acquisition is optimised over the continuous
relaxation, then the winner is decoded (one-hot argmax, rounding) — the
suggested params are always a valid point of the space.

Initial design. The first ``initial_points(space)`` suggestions (observed plus
pending) come from the partition's scrambled Sobol' stream, as do all
suggestions while fewer than ``MIN_FIT_POINTS`` trials have completed.

Only COMPLETED trials are observations (the suggest service feeds
``TRIAL_COMPLETED`` events only): an early-stopped trial's last value is an
intermediate, lower-fidelity number and is not mixed in as if it were final.

Determinism: everything random is seeded from (study seed, partition, draw).
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ladder.params import PlainValue
from ladder.samplers.base import (
    LocalDraws,
    Observation,
    Proposal,
    Sampler,
    SamplerContext,
    derive_seed,
)
from ladder.samplers.quasirandom import QuasiRandomSampler
from ladder.space import CategoricalEncoding, Space

ENCODING = CategoricalEncoding.ONE_HOT
MIN_FIT_POINTS = 3
# Acquisition optimisation sized for ~0.5 s per call on one CPU core at 100
# observations in 6-D (see bench/quality): enough restarts to escape the worst
# local optima of a 6-D log-EI surface, few enough to stay interactive.
RAW_SAMPLES = 128
NUM_RESTARTS = 3
MAX_ITERATIONS = 40
MC_SAMPLES = 64
FIT_ITERATIONS = 60
# torch grabs every core by default; the suggest process shares its host.
TORCH_THREADS = int(os.environ.get("LADDER_TORCH_THREADS", "1"))

_threads_set = threading.Lock()
_threads_done = False


def initial_points(space: Space) -> int:
    """Size of the quasi-random initial design: max(2 * dim, 8)."""
    return max(2 * space.dim(ENCODING), 8)


def _limit_torch_threads() -> None:
    global _threads_done
    with _threads_set:
        if not _threads_done:
            torch.set_num_threads(max(1, TORCH_THREADS))
            _threads_done = True


class GPSampler(Sampler):
    algorithm = "gp"
    uses_pending = True

    def __init__(self, context: SamplerContext) -> None:
        super().__init__(context)
        # One draw counter for Sobol' and model-based proposals alike, so draw
        # indices (and the trial seeds derived from them) stay unique.
        self._reserve = context.reserve or LocalDraws()
        self._initial = QuasiRandomSampler(dataclasses.replace(context, reserve=self._reserve))
        self._lock = threading.Lock()
        # Hyperparameters of the last fit: the next fit starts there, so it
        # converges in a few L-BFGS steps instead of from the prior.
        self._hyperparameters: dict[str, torch.Tensor] | None = None
        _limit_torch_threads()

    def suggest(
        self, count: int, pending: Sequence[Mapping[str, PlainValue]] = ()
    ) -> list[Proposal]:
        if count <= 0:
            return []
        usable = _finite(self.observations.values())
        if len(usable) < MIN_FIT_POINTS or len(usable) + len(pending) < initial_points(self.space):
            return self._initial.suggest(count, pending)
        first = self._reserve(count)
        with self._lock:
            return self._model_based(usable, pending, count, first)

    def _model_based(
        self,
        usable: list[Observation],
        pending: Sequence[Mapping[str, PlainValue]],
        count: int,
        first: int,
    ) -> list[Proposal]:
        from botorch.acquisition.logei import qLogNoisyExpectedImprovement
        from botorch.optim import optimize_acqf
        from botorch.sampling import SobolQMCNormalSampler

        seed = derive_seed(self.context.seed, self.context.partition, first)
        train_x = self._encode([o.params for o in usable])
        train_y = torch.tensor(
            [[o.value if self.context.maximize else -o.value] for o in usable],
            dtype=torch.float64,
        )
        x_pending = self._encode(pending) if pending else None
        dim = train_x.shape[1]
        bounds = torch.stack([torch.zeros(dim), torch.ones(dim)]).to(torch.float64)
        with torch.random.fork_rng(), warnings.catch_warnings():
            # Fit and acquisition warnings (e.g. "optimization failed, retrying")
            # are routine on tiny data sets; the result is still a valid point.
            warnings.simplefilter("ignore")
            torch.manual_seed(seed % 2**63)
            model = fit_model(train_x, train_y, self._hyperparameters)
            self._hyperparameters = hyperparameters(model)
            acquisition = qLogNoisyExpectedImprovement(
                model,
                X_baseline=train_x,
                X_pending=x_pending,
                prune_baseline=True,
                sampler=SobolQMCNormalSampler(torch.Size([MC_SAMPLES]), seed=seed % 2**31),
            )
            candidates, _ = optimize_acqf(
                acquisition,
                bounds=bounds,
                q=count,
                num_restarts=NUM_RESTARTS,
                raw_samples=RAW_SAMPLES,
                options={"maxiter": MAX_ITERATIONS, "seed": seed % 2**31},
            )
            decoded = [self.space.sample_to_params(row.tolist(), ENCODING) for row in candidates]
            with torch.no_grad():
                posterior = model.posterior(self._encode(decoded))
                mean = posterior.mean.squeeze(-1).tolist()
                std = posterior.variance.clamp_min(0).sqrt().squeeze(-1).tolist()
        sign = 1.0 if self.context.maximize else -1.0
        return [
            Proposal(
                params=params,
                draw=first + i,
                predicted_mean=sign * float(mean[i]),
                predicted_std=float(std[i]),
            )
            for i, params in enumerate(decoded)
        ]

    def _encode(self, points: Sequence[Mapping[str, PlainValue]]) -> torch.Tensor:
        rows = [self.space.params_to_unit(p, ENCODING) for p in points]
        return torch.tensor(np.stack(rows), dtype=torch.float64)


def hyperparameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Kernel, mean and noise parameters (not the data-dependent transforms)."""
    return {
        name: value.detach().clone()
        for name, value in model.state_dict().items()
        if name.split(".")[0] in ("covar_module", "mean_module", "likelihood")
    }


def fit_model(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    start: dict[str, torch.Tensor] | None = None,
):  # noqa: ANN201 - botorch type
    """A SingleTaskGP (Matérn-5/2 ARD, learned noise, standardised y), MLL-fitted,
    starting from ``start`` hyperparameters when given."""
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    model = SingleTaskGP(train_x, train_y, outcome_transform=Standardize(m=1))
    if start is not None:
        model.load_state_dict(start, strict=False)
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    try:
        fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": FIT_ITERATIONS}})
    except Exception:  # noqa: BLE001 - keep the prior hyperparameters; still a usable model
        pass
    model.eval()
    return model


def _finite(observations: object) -> list[Observation]:
    return [o for o in observations if math.isfinite(o.value)]  # type: ignore[attr-defined]
