"""Gaussian-process Bayesian optimisation (BoTorch) with pending-aware batches.

Model. ``SingleTaskGP`` on the ``ONE_HOT`` unit-cube encoding of ``ladder.space``:
floats linear or log as the space says, ints and ordinals as one continuous
coordinate (training points sit at the centre of their value's bin), categoricals
one column per choice (no invented order), inactive conditional children at the
space's neutral filler. Kernel: Matérn-5/2 with one lengthscale per column (ARD)
and BoTorch's dimension-scaled log-normal lengthscale prior; y standardised by
the model's ``Standardize`` transform. Values are negated for MINIMIZE studies
because BoTorch maximises.

Noise is learned, with a floor of ``MIN_NOISE`` (standardised units) and a
Gamma(1.1, 30) prior — the values Optuna's GPSampler uses. BoTorch's default
(floor 1e-4, LogNormal(-4, 1) prior) blurs a near-deterministic objective: on
Branin it cannot resolve the last 1e-3 of regret. With this prior an objective
with 2-5 % run-to-run noise still gets its noise fitted (the likelihood
dominates the weak prior), and a deterministic one is interpolated tightly.

Fit. The hyperparameters are the MAP estimate of that model, BoTorch's
``fit_gpytorch_mll`` objective and optimiser (L-BFGS-B, ``FIT_ITERATIONS`` at most)
evaluated in plain torch (``gp_fit.py``): through gpytorch an evaluation cost about
5 ms at 100 observations in 20 columns, most of the fit (bench/quality/ask_cost.py).

Posterior. The fitted model's posterior is re-implemented in plain torch on a
cached Cholesky factor (``fast_posterior_model``; same numbers as gpytorch's,
checked by a unit test): the acquisition optimiser calls it hundreds of times
per ask, and gpytorch's per-call overhead would be most of an ask's cost.

Acquisition. ``qLogExpectedImprovement`` over the best observed value, with
``X_pending`` = the encoded points other workers are evaluating right now:
each MC sample draws the new point jointly with the pending ones, so a point
whose improvement a running trial is likely to deliver anyway scores low and
a new suggestion does not duplicate a running one (the same batch criterion
as Optuna's GPSampler with running trials). For one new point the pending
points' joint draws are made once per ask and each candidate is sampled
conditionally on them (``gp_pending.py``, as Optuna does): the same
acquisition for the cost of a single-point posterior per evaluation, where
sampling the joint posterior of the candidate and 7 pending points at every
evaluation was three quarters of an ask. ``count > 1`` asks for a joint
q-batch (BoTorch's qLogEI). The noisy variant (qLogNEI, the previous choice)
samples the joint posterior over every baseline point at each evaluation, several times the
cost; the observed best is a sound incumbent when the fitted noise is small,
and on a noisy objective it errs towards exploration, not towards a wrong
point.

Large batches. qLogEI's joint batch costs grow steeply with its size (each MC
evaluation samples the joint posterior of the batch and every pending point, and
the optimiser works in ``q x dim`` dimensions), and at fleet rates the suggestion
policy asks for hundreds of points per refit with hundreds pending. Above
``JOINT_MAX`` points asked, or ``JOINT_PENDING_MAX`` pending, the batch is drawn by
Thompson sampling instead: a candidate set (Sobol' points plus perturbations of the best
observed ones, decoded, none taken) gets one joint posterior sample per point and
each sample's maximiser is taken, without replacement (BoTorch's
``MaxPosteriorSampling``). The samples' randomness spreads a batch the way the
pending points do for qLogEI; its cost is one Cholesky factor of the candidates'
covariance (bounded by ``TS_MAX_CANDIDATES``) plus a matrix product per point.
Pending points enter as taken points (no candidate repeats or lies next to one).

Exploitation draws. Every ``EXPLOIT_EVERY``-th draw number (deterministic; a
batch that spans one or more such numbers gets one such point, first) is the
maximiser of the posterior mean instead, found from the best observed points
by the same optimisation as the acquisition's, unless it repeats an
observed or pending point (see "Repeats": the same configuration, or within
``MIN_DISTANCE`` on a space with floats), where evaluating it would teach
nothing; then the draw is an ordinary
acquisition draw. A design choice: EI alone keeps trading a sure small gain
for variance, so near the end of a 100-evaluation budget it refines the
incumbent slowly; one draw in eight spent on the model's best guess buys the
last digits of precision on smooth objectives (see bench/quality) at the cost
of one-eighth fewer exploratory points. The point is added to the pending
set of the rest of its batch.

Repeats. qLogEI's smoothed maximum scores a batch that repeats a pending point a
little higher than the pending point alone, so on flat acquisitions the optimiser
could return a point being evaluated right now (0.2 % of Hartmann-6 asks, 21 % on
the conditional space, whose decoding maps many relaxed points onto one). Every
candidate that repeats a taken configuration (observed, pending or another point
of its batch; ``distinct.py``) or, on a space with floats, lies closer than
``MIN_DISTANCE`` to an observed or pending point is passed over for the
best-scoring one that is not. On a discrete space the best candidates often all
repeat (the acquisition's maximum sits on an evaluated configuration once the
good region is known: without the rule, 46-53 distinct configurations of 100 on
three of the finite spaces of bench/quality/distinct_configs.py), so when every
refined candidate is taken,
each taken point of the batch is replaced by the best, by the acquisition with the
rest of the batch fixed, of its discrete neighbours and ``UNSEEN_CANDIDATES``
unseen configurations that are not taken. Once every configuration of the space
is taken, repeats are allowed again.

Optimisation of the acquisition, in three steps:

1. multi-start L-BFGS over the continuous relaxation, from ``NUM_RESTARTS``
   starts picked among Sobol' samples and perturbations of the best observed
   points, plus the ``INCUMBENT_STARTS`` best observed points themselves (as
   Optuna does) so the incumbent's basin is always refined. L-BFGS works on
   ``z = x / lengthscale`` column by column (``PRECONDITION``, as Optuna's
   GPSampler does): the acquisition is a function of ``x / lengthscale``, so in
   these units every column has the same curvature. On Hartmann-6 hidden in
   20-D (bench/quality/suite.py) the fitted lengthscales are 0.4-0.6 on the 6
   columns that matter and 2-7 on the 14 others, and on the raw unit cube
   L-BFGS spent its evaluations on that conditioning (on an anisotropic
   quadratic, tests/unit/test_gp.py: 72 evaluations against 5). Only when the
   lengthscales are ``PRECONDITION_RATIO`` (10) or more apart: on Branin (2-D,
   ratio about 2) the rescaled search ended 3-8x further from the optimum on
   three seeds of three (its last digits of regret, 1e-6 to 1e-5), and with
   similar lengthscales there is no conditioning to repair;
2. a discrete local search on the winner: every other choice of each
   categorical and the neighbouring values (±1) of each int / ordinal are
   scored with the acquisition on the *decoded* point (exactly the point that
   will be evaluated), the best move is taken, until no move improves;
3. if the space has discrete parameters, one more L-BFGS run over the
   continuous columns with the discrete ones fixed at the search's result.

Step 2 is what Optuna's mixed optimiser does; without it a categorical would be
the argmax of a relaxed one-hot vector and an int the rounding of a relaxed
coordinate, points the acquisition never scored.

Refits between hyperparameter fits. A refit conditions the GP on every observation
of its fidelity, but the hyperparameters (lengthscales, output scale, noise) are
MLL-fitted only while the fidelity is small (under ``INCREMENTAL_MIN`` points, every
refit: what a 100-evaluation study sees) or once it has grown by ``REFIT_GROWTH`` since
their last fit (``full_fit_due``); in between, the kept hyperparameters are used as they
are, so the refit costs one Cholesky factor instead of an L-BFGS run over the marginal
likelihood. At fleet rates the observations arrive by the hundred between refits and
the hyperparameters of a few hundred points barely move with the next few dozen, while
the posterior (which points were good) changes with every one: the model the buffer is
filled from stays as fresh as the data, for less CPU.

Training set. ``select_fidelity`` (base.py) picks one fidelity: final values
once there are ``initial_points(space)`` of them, else the highest rung with
that many observations (multi-fidelity, BOHB-style); values of different
fidelities are never fitted together. At most ``MAX_FIT_POINTS`` observations
are fitted (env ``LADDER_GP_MAX_FIT_POINTS``, default 512), chosen by
``fit_subset``: the best half by value, plus the rest spread evenly over the
others in arrival order (space-filling in practice: early trials are the
Sobol' design, late ones cluster near the optimum). Exact GP cost is cubic in
the training set, so this bounds a refit at any study size.

Initial design. The first ``initial_points(space)`` suggestions (observed,
infeasible and pending) come from the partition's scrambled Sobol' stream, as do
all suggestions while fewer than ``MIN_FIT_POINTS`` feasible values are known.
Its size is twice the unit-cube columns, between ``INITIAL_MIN`` and
``INITIAL_MAX``. Not more: the dimension-scaled lengthscale prior already lets a
fit on 16 points in 20 columns tell the relevant ones apart, and every
Sobol' point beyond that is one the model does not choose. Uncapped (2 x 20 =
40 of 100 evaluations) it was what made the GP trail Optuna's (10 startup
trials) on Hartmann-6 embedded in 20-D (bench/quality/suite.py); on one-hot
spaces it spent up to 60 of 100 evaluations (six categoricals of five values).
Not fewer than 16 either where a space has that many columns: with 12 on the
mixed problem of bench/quality (a 4-way categorical among floats) one seed in
three never sampled the best category.

Failed trials. An infeasible observation (``base.INFEASIBLE_KINDS``: the trial
ran out of memory, diverged, timed out or kept crashing) is fitted with a
penalised value: the worst feasible value of the fidelity being modelled, in the
study's direction (``penalised``). Chosen over a feasibility model (a second GP
or classifier whose probability of feasibility multiplies the acquisition, as
Optuna's GPSampler does for constraints) because:

* one model serves every use the sampler makes of it: qLogEI, the exploitation
  draw (posterior-mean maximiser), the starts at the best observed points and the
  predicted mean all steer away from a crashing region. A feasibility factor on
  the acquisition alone would leave the exploitation draw free to land there;
* one GP fit per refit, on the path whose cost is cubic in the observations; a
  second model doubles it;
* it is what Vizier's GP bandit does (its output warper imputes infeasible labels
  below the worst feasible one).

The worst value, not an arbitrary large penalty, keeps the standardised targets'
scale: a huge constant would squash every difference between feasible values.
The cost: next to a feasibility boundary the surrogate is pulled towards the
worst value on the feasible side too, so the sampler approaches that edge
cautiously (the largest batch that fits in memory is found more slowly); a crash
costs a whole trial, so erring that way is the cheaper mistake. Failed points
are also taken points: no suggestion repeats one (``MIN_DISTANCE``).

Determinism: everything random is seeded from (study seed, partition, draw).
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ladder.params import PlainValue
from ladder.samplers import gp_logei
from ladder.samplers.base import (
    FidelitySet,
    Observation,
    Pending,
    Proposal,
    SamplerContext,
    derive_seed,
)
from ladder.samplers.distinct import ConfigKey, Taken, config_key, unseen
from ladder.samplers.model_based import ModelBasedSampler
from ladder.space import CategoricalEncoding, Kind, Space

# Bumped whenever suggestions change for the same inputs (bench cache key).
VERSION = "16"
ENCODING = CategoricalEncoding.ONE_HOT
MIN_FIT_POINTS = 3
INITIAL_MIN = 8
INITIAL_MAX = 16
MAX_FIT_POINTS = int(os.environ.get("LADDER_GP_MAX_FIT_POINTS", "512"))
MIN_NOISE = 1e-6
NOISE_PRIOR = (1.1, 30.0)  # Gamma(concentration, rate) on the standardised noise variance
# Acquisition optimisation sized for well under a second per call on one CPU
# core at 100 observations in 6-D (see bench/quality for the measured figure).
RAW_SAMPLES = 256
NUM_RESTARTS = 4
MAX_ITERATIONS = 60
LOCAL_SEARCH_ROUNDS = 8
MC_SAMPLES = 64
# Starts of the acquisition optimiser at the best observed points, and the
# scale of the Gaussian perturbations of them among the raw samples.
INCUMBENT_STARTS = 3
# L-BFGS works on x / lengthscale when the largest fitted lengthscale is at least
# PRECONDITION_RATIO times the smallest (module docstring, "Optimisation of the acquisition").
PRECONDITION = True
PRECONDITION_RATIO = 10.0
PERTURBATION = 0.02
# Every EXPLOIT_EVERY-th draw is the posterior-mean maximiser (module docstring),
# unless it is closer than MIN_DISTANCE (unit cube) to a known point.
EXPLOIT_EVERY = 8
# No suggestion lies closer than this (unit cube) to an observed or pending point or
# to another point of its batch (module docstring, "Repeats").
MIN_DISTANCE = 1e-4
# Large batches (module docstring): above JOINT_MAX points asked, or with more than
# JOINT_PENDING_MAX pending, a batch is drawn by Thompson sampling over
# TS_CANDIDATES_PER_POINT candidates per point, between TS_MIN_CANDIDATES and
# TS_MAX_CANDIDATES (a Cholesky factor of the candidates' joint posterior: cubic in
# their number), a quarter of them Gaussian perturbations (TS_PERTURBATION) of the
# TS_INCUMBENTS best observed points.
JOINT_MAX = 16
JOINT_PENDING_MAX = 64
TS_CANDIDATES_PER_POINT = 4
TS_MIN_CANDIDATES = 512
TS_MAX_CANDIDATES = 2048
TS_INCUMBENTS = 16
TS_PERTURBATION = 0.05
# Unseen configurations scored when every candidate repeats (module docstring).
UNSEEN_CANDIDATES = 64
REFINE_TRIES = 3
FIT_ITERATIONS = 60
# Refits between hyperparameter fits (module docstring): below INCREMENTAL_MIN points of a
# fidelity every refit fits them; above, only once the fidelity grew by REFIT_GROWTH.
INCREMENTAL_MIN = 128
REFIT_GROWTH = 0.25
# torch grabs every core by default; the suggest process shares its host.
TORCH_THREADS = int(os.environ.get("LADDER_TORCH_THREADS", "1"))

_threads_set = threading.Lock()
_threads_done = False


def initial_points(space: Space) -> int:
    """Size of the quasi-random initial design: 2 x the unit-cube columns, between
    ``INITIAL_MIN`` and ``INITIAL_MAX`` (module docstring, "Initial design")."""
    return min(max(2 * space.dim(ENCODING), INITIAL_MIN), INITIAL_MAX)


def full_fit_due(size: int, fitted_size: int | None) -> bool:
    """Whether a refit on ``size`` points fits the hyperparameters again, the last fit
    having been on ``fitted_size`` points (None: never fitted). Module docstring,
    "Refits between hyperparameter fits"."""
    return (fitted_size is None or size < INCREMENTAL_MIN or size < fitted_size
            or size >= fitted_size * (1 + REFIT_GROWTH))


def is_exploitation_draw(draw: int) -> bool:
    """Whether draw number ``draw`` is reserved for the posterior-mean maximiser."""
    return EXPLOIT_EVERY > 0 and draw % EXPLOIT_EVERY == EXPLOIT_EVERY - 1


def _limit_torch_threads() -> None:
    global _threads_done
    with _threads_set:
        if not _threads_done:
            torch.set_num_threads(max(1, TORCH_THREADS))
            _threads_done = True


def penalised(fidelity: FidelitySet, maximize: bool) -> list[Observation]:
    """The fidelity's feasible observations plus its infeasible ones, each given
    the worst feasible value (module docstring, "Failed trials"). Needs at least
    one feasible observation when there are infeasible ones."""
    if not fidelity.infeasible:
        return list(fidelity.observations)
    values = [o.value for o in fidelity.observations]
    worst = min(values) if maximize else max(values)
    return [
        *fidelity.observations,
        *(Observation(o.trial_id, o.params, worst, fidelity.resource) for o in fidelity.infeasible),
    ]


def fit_subset(
    observations: Sequence[Observation], limit: int, maximize: bool
) -> list[Observation]:
    """At most ``limit`` observations to fit: all of them when few enough, else
    the best ``limit // 2`` by value plus ``limit - limit // 2`` spread evenly
    (in arrival order) over the others. Deterministic."""
    if len(observations) <= limit:
        return list(observations)
    sign = -1.0 if maximize else 1.0
    ranked = sorted(range(len(observations)), key=lambda i: sign * observations[i].value)
    n_best = limit // 2
    best = set(ranked[:n_best])
    rest = [i for i in range(len(observations)) if i not in best]
    picks = np.linspace(0, len(rest) - 1, limit - n_best).round().astype(int)
    chosen = best | {rest[i] for i in picks}
    return [observations[i] for i in sorted(chosen)]


class GPSampler(ModelBasedSampler):
    algorithm = "gp"

    def __init__(self, context: SamplerContext) -> None:
        super().__init__(context, startup=initial_points(context.space))
        self._lock = threading.Lock()
        # Hyperparameters of the last fit (per fidelity): the next fit starts
        # there, so it converges in a few L-BFGS steps instead of from the prior.
        self._hyperparameters: dict[float | None, dict[str, torch.Tensor]] = {}
        # The fidelity's size at that fit: refits in between keep the hyperparameters.
        self._fitted_size: dict[float | None, int] = {}
        self._discrete = [p for p in context.space.params if p.kind is not Kind.FLOAT]
        self._has_floats = len(self._discrete) < len(context.space.params)
        _limit_torch_threads()

    def can_fit(self, training: FidelitySet, pending: Pending) -> bool:
        # The initial design is counted in observed, infeasible and pending points
        # (module docstring, "Initial design").
        return (
            len(training.observations) >= MIN_FIT_POINTS
            and training.size + len(pending) >= self.startup
        )

    def _from_model(
        self, fidelity: FidelitySet, count: int, pending: Pending, first: int, taken: Taken
    ) -> list[Proposal]:
        maximize = self.context.maximize
        usable = fit_subset(penalised(fidelity, maximize), MAX_FIT_POINTS, maximize)
        with self._lock:
            return self._model_based(
                usable, fidelity.resource, pending, count, first, taken, fidelity.size)

    def _model_based(
        self,
        usable: list[Observation],
        resource: float | None,
        pending: Pending,
        count: int,
        first: int,
        configs: Taken,
        size: int = 0,
    ) -> list[Proposal]:
        seed = derive_seed(self.context.seed, self.context.partition, first)
        train_x = self._encode([o.params for o in usable])
        train_y = torch.tensor(
            [[o.value if self.context.maximize else -o.value] for o in usable],
            dtype=torch.float64,
        )
        in_flight = self._encode(pending) if pending else train_x[:0]
        dim = train_x.shape[1]
        bounds = torch.stack([torch.zeros(dim), torch.ones(dim)]).to(torch.float64)
        options = {"maxiter": MAX_ITERATIONS, "seed": seed % 2**31}
        with torch.random.fork_rng(), warnings.catch_warnings():
            # Fit and acquisition warnings (e.g. "optimization failed, retrying")
            # are routine on tiny data sets; the result is still a valid point.
            warnings.simplefilter("ignore")
            torch.manual_seed(seed % 2**63)
            optimise = full_fit_due(size, self._fitted_size.get(resource))
            fitted = fit_model(train_x, train_y, self._hyperparameters.get(resource), optimise)
            if optimise:
                self._hyperparameters[resource] = hyperparameters(fitted)
                self._fitted_size[resource] = size
            model = fast_posterior_model(fitted)
            decoded: list[dict[str, PlainValue]] = []
            if any(is_exploitation_draw(first + i) for i in range(count)):
                point = self._exploitation_point(
                    model, train_x, train_y, in_flight, bounds, options, configs
                )
                if point is not None:
                    decoded.append(point)
                    configs.add(point)
                    in_flight = torch.cat([in_flight, self._encode([point])])
            if len(decoded) < count and (count > JOINT_MAX or len(in_flight) > JOINT_PENDING_MAX):
                decoded += self._thompson(
                    model, train_x, train_y, in_flight, count - len(decoded), seed, configs
                )
            elif len(decoded) < count:
                acquisition = log_ei(
                    model, train_y.max(), in_flight, count - len(decoded), seed % 2**31
                )
                starts = self._starts(
                    acquisition, train_x, train_y, count - len(decoded), options["seed"]
                )
                taken = torch.cat([train_x, in_flight])
                decoded += self._maximise(acquisition, starts, bounds, options, taken, configs)
            return self._predicted(model, decoded, first, len(usable))

    def _thompson(
        self,
        model: torch.nn.Module,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        in_flight: torch.Tensor,
        count: int,
        seed: int,
        configs: Taken,
    ) -> list[dict[str, PlainValue]]:
        """``count`` points by Thompson sampling (module docstring, "Large
        batches"): one joint posterior sample over the candidate set per point, its
        maximiser taken without replacement (BoTorch's ``MaxPosteriorSampling``)."""
        from botorch.generation.sampling import MaxPosteriorSampling

        best = train_x[torch.argsort(train_y.squeeze(-1), descending=True)[:TS_INCUMBENTS]]
        taken = torch.cat([train_x, in_flight])
        candidates = self._thompson_candidates(best, taken, count, seed, configs)
        if not candidates:
            return []
        encoded = self._encode(candidates)
        with torch.no_grad():
            posterior = model.posterior(encoded)
            mean = posterior.mean.squeeze(-1)
            factor = _sampling_factor(posterior.distribution.covariance_matrix)
            generator = torch.Generator().manual_seed(seed % 2**63)
            k = min(count, len(candidates))
            normal = torch.randn(len(candidates), k, generator=generator, dtype=mean.dtype)
            samples = (mean.unsqueeze(-1) + factor @ normal).T.unsqueeze(-1)  # k x N x 1
            picked = MaxPosteriorSampling(model, replacement=False).maximize_samples(
                encoded, samples, k
            )
            rows = torch.cdist(picked, encoded).argmin(dim=-1).tolist()
        return [candidates[row] for row in rows]

    def _thompson_candidates(
        self, best: torch.Tensor, taken: torch.Tensor, count: int, seed: int, configs: Taken
    ) -> list[dict[str, PlainValue]]:
        """Decoded candidates for Thompson sampling, none in ``configs`` nor within
        ``MIN_DISTANCE`` of a point of ``taken`` (encoded observed and pending
        points), no two the same: Sobol' points and, for a quarter, Gaussian
        perturbations of ``best`` (the best observed points, encoded).
        ``TS_CANDIDATES_PER_POINT`` per point wanted, within the bounds."""
        from botorch.utils.sampling import draw_sobol_samples

        n = min(TS_MAX_CANDIDATES, max(TS_MIN_CANDIDATES, TS_CANDIDATES_PER_POINT * count))
        dim = best.shape[1]
        unit_cube = torch.stack([torch.zeros(dim), torch.ones(dim)]).to(best)
        sobol = draw_sobol_samples(unit_cube, n=n - n // 4, q=1, seed=seed % 2**31).squeeze(1)
        generator = torch.Generator().manual_seed(seed % 2**63)
        around = best[torch.randint(len(best), (n // 4,), generator=generator)]
        around = around + TS_PERTURBATION * torch.randn(around.shape, generator=generator)
        raw = torch.cat([sobol, around.clamp(0, 1)])
        # Distinct among themselves by their own keys: ``configs`` grown with them
        # would call the space exhausted once they cover it, and block nothing.
        keys: set[ConfigKey] = set()
        decoded = []
        for row in raw.tolist():
            params = self.space.sample_to_params(row, ENCODING)
            key = config_key(self.space, params)
            if key not in keys and not configs.blocks(params):
                keys.add(key)
                decoded.append(params)
        if not decoded or not self._has_floats:
            return decoded
        distance = torch.cdist(self._encode(decoded), taken).min(dim=-1).values
        return [p for p, d in zip(decoded, distance.tolist(), strict=True) if d >= MIN_DISTANCE]

    def _predicted(
        self,
        model: torch.nn.Module,
        decoded: list[dict[str, PlainValue]],
        first: int,
        fitted_on: int,
    ) -> list[Proposal]:
        """``decoded`` as proposals numbered from draw ``first``, with the model's
        mean and standard deviation at each (in the metric's direction)."""
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
                algorithm=self.algorithm,
                model_observations=fitted_on,
            )
            for i, params in enumerate(decoded)
        ]

    def _maximise(
        self,
        acquisition: torch.nn.Module,
        starts: torch.Tensor,
        bounds: torch.Tensor,
        options: dict,
        taken: torch.Tensor | None = None,
        configs: Taken | None = None,
    ) -> list[dict[str, PlainValue]]:
        """The three-step optimisation of the module docstring from ``starts``
        (restarts x q x dim). Every restart's result and every start is decoded
        and the best *decoded* batch is refined: the best relaxed one can round
        to a poor point (a one-hot vector between two categories, scored where
        the model extrapolates, becomes one of them), and then a start (e.g.
        the incumbent) whose continuous part step 3 polishes is the better
        candidate. ``taken`` (encoded) and ``configs`` are the observed and pending
        points, which no point of the batch may repeat (module docstring, "Repeats")."""
        from botorch.optim import optimize_acqf

        configs = configs if configs is not None else Taken(self.space)

        scale = _column_scale(acquisition, bounds.shape[1])
        # PendingLogEI (single points) exposes its NumPy terms: optimise them directly.
        terms = getattr(acquisition, "terms", None)
        if terms is not None:
            relaxed = torch.from_numpy(
                gp_logei.maximise(
                    terms, starts.squeeze(1).numpy(), scale.numpy(), options["maxiter"]
                )
            ).unsqueeze(1)
        else:
            relaxed, _ = optimize_acqf(
                Preconditioned(acquisition, scale),
                bounds=bounds / scale,
                q=starts.shape[1],
                num_restarts=len(starts),
                batch_initial_conditions=starts / scale,
                return_best_only=False,
                options=options,
            )
            relaxed = (relaxed * scale).clamp(0, 1)
        batches = [
            [self.space.sample_to_params(row.tolist(), ENCODING) for row in batch]
            for batch in torch.cat([relaxed, starts])
        ]
        with torch.no_grad():
            scores = acquisition(torch.stack([self._encode(batch) for batch in batches]))
        # The best candidate that, once refined, repeats no known point (module
        # docstring, "Repeats"); refining costs, so at most REFINE_TRIES are.
        first: list[dict[str, PlainValue]] | None = None
        tries = 0
        for index in torch.argsort(scores, descending=True).tolist():
            candidate = batches[index]
            if self._discrete:
                if tries == REFINE_TRIES:
                    break
                tries += 1
                candidate = self._refine_discrete(acquisition, candidate, bounds, options)
            if first is None:
                first = candidate
            if not self._repeats(candidate, taken, configs):
                return candidate
        best = first if first is not None else batches[0]
        return self._replace_taken(acquisition, best, configs, options["seed"])

    def _repeats(
        self, batch: list[dict[str, PlainValue]], taken: torch.Tensor | None, configs: Taken
    ) -> bool:
        """Whether a point of ``batch`` repeats a configuration of ``configs`` or
        another of its batch, or, on a space with floats, lies within
        ``MIN_DISTANCE`` of a point of ``taken`` (encoded observed and pending
        points) or of another of its batch."""
        seen = configs.copy()
        for params in batch:
            if seen.blocks(params):
                return True
            seen.add(params)
        if not self._has_floats:
            return False  # configurations are exact: nothing is "near" another
        encoded = self._encode(batch)
        if len(batch) > 1:
            inside = torch.cdist(encoded, encoded)
            inside.fill_diagonal_(math.inf)
            if inside.min().item() < MIN_DISTANCE:
                return True
        if taken is None or not len(taken):
            return False
        return torch.cdist(encoded, taken).min().item() < MIN_DISTANCE

    def _replace_taken(
        self,
        acquisition: torch.nn.Module,
        batch: list[dict[str, PlainValue]],
        configs: Taken,
        seed: int,
    ) -> list[dict[str, PlainValue]]:
        """``batch`` with each point whose configuration is taken (by ``configs`` or
        an earlier point of the batch) replaced by the best, by the acquisition with
        the other points fixed, of its discrete neighbours and ``UNSEEN_CANDIDATES``
        unseen configurations that are not taken (module docstring, "Repeats")."""
        seen = configs.copy()
        rng = np.random.default_rng(seed)
        batch = list(batch)
        for row, params in enumerate(batch):
            if seen.blocks(params):
                options = [n for n in self._neighbours(params) if not seen.blocks(n)]
                options += unseen(self.space, seen, rng, UNSEEN_CANDIDATES)
                if options:
                    batches = [[*batch[:row], o, *batch[row + 1 :]] for o in options]
                    with torch.no_grad():
                        values = acquisition(torch.stack([self._encode(b) for b in batches]))
                    batch[row] = options[int(torch.argmax(values))]
            seen.add(batch[row])
        return batch

    def _starts(
        self,
        acquisition: torch.nn.Module,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        q: int,
        seed: int,
    ) -> torch.Tensor:
        """L-BFGS starting batches (restarts x q x dim): ``NUM_RESTARTS`` picked by
        BoTorch's Boltzmann heuristic among ``RAW_SAMPLES`` Sobol' batches and
        Gaussian perturbations of the best observed points, plus the
        ``INCUMBENT_STARTS`` best observed points themselves in the first row.
        The incumbents are what lets the optimiser refine the best basin to the
        last digits: at an observed point the improvement is ~0, so the heuristic
        alone rarely picks it, yet the optimum of the acquisition is often a
        small step away from it."""
        from botorch.optim.initializers import initialize_q_batch
        from botorch.utils.sampling import draw_sobol_samples

        generator = torch.Generator().manual_seed(seed)
        unit_cube = torch.stack([torch.zeros(train_x.shape[1]), torch.ones(train_x.shape[1])])
        raw = draw_sobol_samples(unit_cube.to(train_x), n=RAW_SAMPLES, q=q, seed=seed)
        best = train_x[torch.argsort(train_y.squeeze(-1), descending=True)[:INCUMBENT_STARTS]]
        nearby = best.repeat(RAW_SAMPLES // (4 * len(best)) + 1, 1)
        nearby = (nearby + PERTURBATION * torch.randn(nearby.shape, generator=generator)).clamp(
            0, 1
        )
        around = raw[: len(nearby)].clone()
        around[:, 0, :] = nearby
        incumbents = raw[: len(best)].clone()
        incumbents[:, 0, :] = best
        candidates = torch.cat([raw, around])
        with torch.no_grad():
            values = torch.cat([acquisition(chunk) for chunk in candidates.split(256)])
        picked, _ = initialize_q_batch(candidates, values, NUM_RESTARTS)
        return torch.cat([picked, incumbents])

    def _exploitation_point(
        self,
        model: torch.nn.Module,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        in_flight: torch.Tensor,
        bounds: torch.Tensor,
        options: dict,
        configs: Taken,
    ) -> dict[str, PlainValue] | None:
        """The maximiser of the posterior mean, found by L-BFGS from the best
        observed points (then the same discrete search as the acquisition), or
        None when it repeats an observed or pending point (``_repeats``):
        evaluating it would then teach the model nothing."""
        from botorch.acquisition.analytic import PosteriorMean

        best = train_x[torch.argsort(train_y.squeeze(-1), descending=True)[:INCUMBENT_STARTS]]
        taken = torch.cat([train_x, in_flight])
        mean = PosteriorMean(model)
        point = self._maximise(mean, best.unsqueeze(1), bounds, options, taken, configs)
        return None if self._repeats(point, taken, configs) else point[0]

    def _refine_discrete(
        self,
        acquisition: torch.nn.Module,
        batch: list[dict[str, PlainValue]],
        bounds: torch.Tensor,
        options: dict,
    ) -> list[dict[str, PlainValue]]:
        """Steps 2 and 3 of the acquisition optimisation (module docstring)."""
        from botorch.optim import optimize_acqf

        batch = [dict(p) for p in batch]
        for row in range(len(batch)):
            batch[row] = self._local_search(acquisition, batch, row)
        current = self._encode(batch)
        continuous = {
            column
            for p, columns in self.space.columns(ENCODING)
            if p.kind is Kind.FLOAT
            for column in range(columns.start, columns.stop)
        }
        if len(batch) > 1 or not continuous:
            # Step 3 only for q = 1: fixed features are per column, not per row.
            return batch
        fixed = {c: float(current[0, c]) for c in range(current.shape[1]) if c not in continuous}
        polished, _ = optimize_acqf(
            acquisition,
            bounds=bounds,
            q=1,
            num_restarts=1,
            raw_samples=1,
            fixed_features=fixed,
            batch_initial_conditions=current.unsqueeze(0),
            options={k: v for k, v in options.items() if k != "sample_around_best"},
        )
        candidate = self.space.sample_to_params(polished[0].tolist(), ENCODING)
        with torch.no_grad():
            before = acquisition(current.unsqueeze(0)).item()
            after = acquisition(self._encode([candidate]).unsqueeze(0)).item()
        return [candidate] if after >= before else batch

    def _local_search(
        self,
        acquisition: torch.nn.Module,
        batch: list[dict[str, PlainValue]],
        row: int,
    ) -> dict[str, PlainValue]:
        """Greedy best-move search over the discrete parameters of ``batch[row]``
        (the other rows of the q-batch held fixed)."""
        point = batch[row]
        with torch.no_grad():
            best_value = acquisition(self._encode(batch).unsqueeze(0)).item()
            for _ in range(LOCAL_SEARCH_ROUNDS):
                moves = self._neighbours(point)
                if not moves:
                    break
                candidates = torch.stack(
                    [self._encode(batch[:row] + [move] + batch[row + 1 :]) for move in moves]
                )
                values = acquisition(candidates)
                best = int(torch.argmax(values))
                if values[best].item() <= best_value:
                    break
                best_value, point = values[best].item(), moves[best]
        return point

    def _neighbours(self, point: Mapping[str, PlainValue]) -> list[dict[str, PlainValue]]:
        """Points differing from ``point`` in one active discrete parameter: another
        categorical choice, or the next lower / higher int or ordinal value. A
        parent switch activates children at their neutral filler (decoded)."""
        out = []
        for p in self._discrete:
            if p.name not in point:
                continue  # inactive child
            value = point[p.name]
            if p.kind is Kind.CATEGORICAL:
                options: list[PlainValue] = [v for v in p.values if v != value]
            elif p.kind is Kind.INT:
                options = [v for v in (int(value) - 1, int(value) + 1) if p.low <= v <= p.high]
            else:
                index = p.index_of(value) or 0
                options = [p.values[i] for i in (index - 1, index + 1) if 0 <= i < len(p.values)]
            for option in options:
                unit = self.space.params_to_unit({**point, p.name: option}, ENCODING)
                out.append(self.space.sample_to_params(unit.tolist(), ENCODING))
        return out

    def _encode(self, points: Sequence[Mapping[str, PlainValue]]) -> torch.Tensor:
        rows = [self.space.params_to_unit(p, ENCODING) for p in points]
        return torch.tensor(np.stack(rows), dtype=torch.float64)


class Preconditioned(torch.nn.Module):
    """``acquisition`` as a function of ``z = x / scale``, column by column (module
    docstring, "Optimisation of the acquisition")."""

    def __init__(self, acquisition: torch.nn.Module, scale: torch.Tensor) -> None:
        super().__init__()
        self.acquisition = acquisition
        self.scale = scale

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.acquisition(z * self.scale)


def _column_scale(acquisition: torch.nn.Module, dim: int) -> torch.Tensor:
    """The fitted lengthscales of the acquisition's model when ``PRECONDITION`` is
    on, the model is a ``fast_posterior_model`` and its lengthscales are at least
    ``PRECONDITION_RATIO`` apart, else ones (no rescaling)."""
    cache = getattr(getattr(acquisition, "model", None), "cache", None)
    if not PRECONDITION or cache is None:
        return torch.ones(dim, dtype=torch.float64)
    lengthscale = cache.lengthscale.reshape(-1).to(torch.float64)
    if lengthscale.max() < PRECONDITION_RATIO * lengthscale.min():
        return torch.ones(dim, dtype=torch.float64)
    return lengthscale


def log_ei(
    model: torch.nn.Module, best_f: torch.Tensor, pending: torch.Tensor, q: int, seed: int
) -> torch.nn.Module:
    """qLogEI of a batch of ``q`` new points jointly with the ``pending`` points
    (encoded) over ``MC_SAMPLES`` quasi-random draws: for one point the
    pending points' draws are made once per ask (``gp_pending.py``: the same
    acquisition at the cost of a single-point posterior), for a joint batch
    BoTorch's ``qLogExpectedImprovement``."""
    from botorch.acquisition.logei import qLogExpectedImprovement
    from botorch.sampling import SobolQMCNormalSampler

    from ladder.samplers.gp_pending import PendingLogEI

    if q == 1:
        return PendingLogEI(model, best_f, pending, MC_SAMPLES, seed)
    return qLogExpectedImprovement(
        model,
        best_f=best_f,
        X_pending=pending if len(pending) else None,
        sampler=SobolQMCNormalSampler(torch.Size([MC_SAMPLES]), seed=seed),
    )


def _sampling_factor(covariance: torch.Tensor) -> torch.Tensor:
    """A matrix F with F F^T = ``covariance`` (to draw joint samples): its Cholesky
    factor (jitter added as needed), else, for a numerically singular covariance
    (candidates almost on top of each other), the symmetric square root from an
    eigendecomposition with negative eigenvalues clipped to zero."""
    from linear_operator.utils.cholesky import psd_safe_cholesky
    from linear_operator.utils.errors import NotPSDError

    try:
        return psd_safe_cholesky(covariance, max_tries=4)
    except NotPSDError:
        values, vectors = torch.linalg.eigh(covariance)
        return vectors * values.clamp_min(0).sqrt().unsqueeze(-2)


@dataclass(frozen=True)
class PosteriorCache:
    """A fitted GP's posterior terms in standardised units: ``factor`` is the
    Cholesky factor of K(train_x, train_x) + noise, ``weights`` solves it for
    the targets minus ``constant``; outputs are ``shift + scale * f``."""

    train_x: torch.Tensor
    lengthscale: torch.Tensor
    constant: torch.Tensor
    factor: torch.Tensor
    weights: torch.Tensor
    shift: torch.Tensor
    scale: torch.Tensor


def matern52(a: torch.Tensor, b: torch.Tensor, lengthscale: torch.Tensor) -> torch.Tensor:
    """Matérn-5/2 kernel matrix (unit output scale) between the rows of ``a`` and ``b``."""
    distance = torch.cdist(a / lengthscale, b / lengthscale).clamp_min(1e-15)
    scaled = math.sqrt(5) * distance
    return (1 + scaled + scaled**2 / 3) * torch.exp(-scaled)


def fast_posterior_model(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (a fitted ``fit_model`` GP) as a BoTorch ``Model`` whose
    posterior is computed in a few plain torch operations from a cached
    Cholesky factor: the same numbers as ``model.posterior``, without
    gpytorch's per-call overhead (which dominated an ask: the acquisition
    optimiser calls the posterior hundreds of times)."""
    from botorch.models.model import Model
    from botorch.posteriors.gpytorch import GPyTorchPosterior
    from gpytorch.distributions import MultivariateNormal
    from linear_operator.utils.cholesky import psd_safe_cholesky

    train_x = model.train_inputs[0]
    lengthscale = model.covar_module.lengthscale.detach()
    constant = model.mean_module.constant.detach()
    noise = model.likelihood.noise.detach()
    shift = model.outcome_transform.means.detach().squeeze()
    scale = model.outcome_transform.stdvs.detach().squeeze()
    covariance = matern52(train_x, train_x, lengthscale)
    factor = psd_safe_cholesky(covariance + noise * torch.eye(len(train_x), dtype=train_x.dtype))
    residual = (model.train_targets.detach() - constant).unsqueeze(-1)
    weights = torch.cholesky_solve(residual, factor).squeeze(-1)

    class FastPosterior(Model):
        num_outputs = 1
        # The cached terms, for acquisitions that condition on pending points
        # (gp_pending.py) without going through ``posterior``.
        cache = PosteriorCache(train_x, lengthscale, constant, factor, weights, shift, scale)

        def posterior(self, X: torch.Tensor, **_: object) -> GPyTorchPosterior:  # noqa: N803
            cross = matern52(X, train_x, lengthscale)
            mean = constant + cross @ weights
            solved = torch.linalg.solve_triangular(factor, cross.transpose(-1, -2), upper=False)
            covariance = matern52(X, X, lengthscale) - solved.transpose(-1, -2) @ solved
            covariance = covariance + 1e-9 * torch.eye(X.shape[-2], dtype=X.dtype)
            return GPyTorchPosterior(
                MultivariateNormal(shift + scale * mean, scale**2 * covariance)
            )

    return FastPosterior()


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
    optimise: bool = True,
):  # noqa: ANN201 - botorch type
    """A SingleTaskGP (Matérn-5/2 ARD, learned noise, standardised y), MLL-fitted,
    starting from ``start`` hyperparameters when given; with ``optimise`` False (and a
    ``start``) conditioned on the data with ``start``'s hyperparameters as they are."""
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
    from gpytorch.constraints import GreaterThan
    from gpytorch.likelihoods import GaussianLikelihood
    from gpytorch.priors import GammaPrior

    from ladder.samplers.gp_fit import fit_map

    concentration, rate = NOISE_PRIOR
    likelihood = GaussianLikelihood(
        noise_prior=GammaPrior(concentration, rate),
        noise_constraint=GreaterThan(MIN_NOISE, transform=None, initial_value=1e-3),
    )
    model = SingleTaskGP(
        train_x,
        train_y,
        likelihood=likelihood,
        covar_module=get_covar_module_with_dim_scaled_prior(
            ard_num_dims=train_x.shape[-1], use_rbf_kernel=False
        ),
        outcome_transform=Standardize(m=1),
    )
    if start is not None:
        model.load_state_dict(start, strict=False)
    if optimise or start is None:
        try:
            fit_map(model, FIT_ITERATIONS)
        except (RuntimeError, ValueError):  # keep the start; still a usable model
            pass
    model.eval()
    return model
