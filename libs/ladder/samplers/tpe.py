"""Tree-structured Parzen Estimator (multivariate), numpy/scipy only.

Split. Completed trials are ranked (direction aware); the best
``n_good = clip(ceil(GAMMA * n), 1, MAX_GOOD)`` form the "good" set, the rest
the "bad" set. Pending trials (running on other workers, plus the points
already proposed in this call) are added to the bad set — the "constant liar"
with the worst possible lie — so the density of good points is pushed away
from where someone is already looking and parallel workers diverge.

Failed trials. Infeasible observations (a trial that ran out of memory,
diverged or timed out; ``base.INFEASIBLE_KINDS``) join the bad set, never the
good one, and do not count in ``n``: ``g(x)`` grows over a region that crashes
and ``l(x)``, fitted on the best feasible trials only, is not pulled into it.
This is what Optuna's TPE does with constraint-violating trials (they rank after
every feasible one, so they land in its "above" group). A failure carries no
value to rank by, so unlike Optuna it never fills the good set even when there
are few feasible trials: one feasible trial is enough (``ModelBasedSampler``).

Densities. ``l(x)`` and ``g(x)`` are Parzen mixtures with one product kernel
per trial plus a broad prior component. Per parameter, in the ``INDEX``
unit-cube encoding of ``ladder.space`` (log scales, int/ordinal bins applied):

* numeric (float, int, ordinal): a Gaussian truncated to [0, 1], bandwidth
  ``BANDWIDTH * n ** (-1 / (d + 4))`` (Scott's rule shape), floored;
* categorical: the trial's choice with probability ``1 - EPSILON``, the rest
  spread evenly over all choices — a smoothed frequency, no invented order.

Conditional parameters: a kernel factor is only applied for a parameter that
is active both in the candidate and in the trial that owns the kernel, so
each child's density is in effect fitted on the trials where it was active.

Proposal. ``N_CANDIDATES`` candidates are sampled from ``l`` (pick a good
trial or the prior, then perturb each parameter with that trial's kernel,
parents first so children appear only when active) and the one with the
largest ``log l - log g`` wins, unless its configuration is taken (observed,
pending or earlier in the batch; ``distinct.py``): then the next candidate by
``log l - log g`` wins, and when every candidate is taken (a finite space whose
good region has been evaluated), the best of ``N_CANDIDATES`` more from ``l`` and
as many unseen configurations. Without that rule TPE re-evaluates its best
configurations on a small discrete space: ``l`` concentrates on them and the
constant liar only lowers, never zeroes, their score (a median of 32 distinct
configurations of 100 on six 5-way categoricals, bench/quality/distinct_configs.py).

Cost. Every observation is encoded once (rows cached by observation key) and a
batch appends each new point's row to the bad set, so a batch of q points over n
observations costs q density evaluations of ``N_CANDIDATES x n`` (numpy), not q
re-encodings of n points in Python: what lets TPE answer a buffer miss of the
suggest service in milliseconds (``policy.py``) and fill a fleet-sized buffer.

Large batches. Point by point, a batch of q costs q density evaluations of
``N_CANDIDATES`` candidates against every bad point, and at fleet rates the
suggestion policy asks for hundreds of points with thousands of observations and
hundreds pending. Above ``POINT_BY_POINT_MAX`` points the batch comes from one pool
of ``POOL_PER_POINT`` candidates per point (at most ``POOL_MAX``) sampled from ``l``:
``log l`` and ``log g`` are computed once for the pool, then each pick is the best
remaining candidate by ``log l - log g`` that is not taken, and its kernel joins
``g`` (the constant liar, an update of one column) before the next pick. The pool's
candidates are drawn from one seed (the batch's first draw), so the points differ
from a point-by-point batch of the same draws; should the pool run out of untaken
candidates, the rest of the batch is drawn point by point.

Training set: ``select_fidelity`` (base.py) with ``N_STARTUP`` as the threshold —
final values once there are ``N_STARTUP`` of them, else the highest rung
resource with that many observations (BOHB-style). Values of two fidelities are
never ranked together; trials stopped early still inform the search before
enough trials have completed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.special import ndtr, ndtri

from ladder.params import PlainValue
from ladder.samplers.base import (
    FidelitySet,
    Observation,
    ObservationKey,
    Pending,
    Proposal,
    SamplerContext,
    derive_seed,
)
from ladder.samplers.distinct import Taken, parents_first, unseen
from ladder.samplers.model_based import ModelBasedSampler
from ladder.space import CategoricalEncoding, Kind, Space

# Bumped whenever suggestions change for the same inputs (bench cache key).
VERSION = "3"
GAMMA = 0.15
MAX_GOOD = 25
N_STARTUP = 10
N_CANDIDATES = 64
BANDWIDTH = 0.3
MIN_BANDWIDTH = 0.02
PRIOR_BANDWIDTH = 1.0
EPSILON = 0.2
# Batches above POINT_BY_POINT_MAX points come from one pool of at most POOL_MAX
# candidates (module docstring, "Large batches").
POINT_BY_POINT_MAX = 16
POOL_PER_POINT = 16
POOL_MAX = 4096
POOL_CHUNK = 256


@dataclasses.dataclass(frozen=True)
class _Encoded:
    """Trials as a matrix: ``values[i, j]`` is param j's unit coordinate in trial i
    (numeric) or its choice index (categorical); ``active[i, j]`` whether set."""

    values: np.ndarray
    active: np.ndarray


class TPESampler(ModelBasedSampler):
    algorithm = "tpe"

    def __init__(self, context: SamplerContext) -> None:
        super().__init__(context, startup=N_STARTUP)
        # Encoded rows of the observations seen, by key (a trial's params never
        # change): a call encodes only the new ones (module docstring, "Cost").
        self._rows: dict[ObservationKey, tuple[np.ndarray, np.ndarray]] = {}

    def _from_model(
        self, fidelity: FidelitySet, count: int, pending: Pending, first: int, taken: Taken
    ) -> list[Proposal]:
        sign = -1.0 if self.context.maximize else 1.0
        order = sorted(fidelity.observations, key=lambda o: (sign * o.value, o.trial_id))
        n_good = min(max(1, math.ceil(GAMMA * len(order))), MAX_GOOD)
        good = self._encoded(order[:n_good])
        bad = _concat(
            [
                self._encoded(order[n_good:]),
                self._encoded(fidelity.infeasible),
                _encode(self.space, pending),
            ]
        )
        chosen: list[dict[str, PlainValue]] = []
        if count > POINT_BY_POINT_MAX:
            rng = np.random.default_rng(
                derive_seed(self.context.seed, self.context.partition, first)
            )
            chosen = propose_pooled(self.space, good, bad, rng, count, taken)
            if chosen:
                bad = _concat([bad, _encode(self.space, chosen)])
        for i in range(len(chosen), count):
            rng = np.random.default_rng(
                derive_seed(self.context.seed, self.context.partition, first + i)
            )
            params = propose_encoded(self.space, good, bad, rng, taken=taken)
            chosen.append(params)
            bad = _concat([bad, _encode(self.space, [params])])  # later points diverge from it
            taken.add(params)
        return [
            Proposal(
                params=params,
                draw=first + i,
                algorithm=self.algorithm,
                model_observations=fidelity.size,
            )
            for i, params in enumerate(chosen)
        ]

    def _encoded(self, observations: Sequence[Observation]) -> _Encoded:
        """``observations`` encoded, from the rows cached by key."""
        rows = []
        for obs in observations:
            row = self._rows.get(obs.key)
            if row is None:
                one = _encode(self.space, [obs.params])
                row = self._rows[obs.key] = (one.values[0], one.active[0])
            rows.append(row)
        if not rows:
            return _encode(self.space, [])
        return _Encoded(np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]))


def propose(
    space: Space,
    good: Sequence[Mapping[str, PlainValue]],
    bad: Sequence[Mapping[str, PlainValue]],
    rng: np.random.Generator,
    n_candidates: int = N_CANDIDATES,
    taken: Taken | None = None,
) -> dict[str, PlainValue]:
    """The candidate (sampled from l) with the best ``log l(x) - log g(x)`` among those
    ``taken`` does not block (module docstring, "Proposal")."""
    return propose_encoded(
        space, _encode(space, good), _encode(space, bad), rng, n_candidates, taken
    )


def propose_encoded(
    space: Space,
    good_enc: _Encoded,
    bad_enc: _Encoded,
    rng: np.random.Generator,
    n_candidates: int = N_CANDIDATES,
    taken: Taken | None = None,
) -> dict[str, PlainValue]:
    """``propose`` on points already encoded."""
    n_total = good_enc.values.shape[0] + bad_enc.values.shape[0]
    bandwidth = max(BANDWIDTH * max(n_total, 1) ** (-1.0 / (len(space) + 4)), MIN_BANDWIDTH)

    def ranked(candidates: _Encoded) -> list[dict[str, PlainValue]]:
        """Decoded candidates, best first, up to the first one not blocked."""
        score = _log_density(space, candidates, good_enc, bandwidth) - _log_density(
            space, candidates, bad_enc, bandwidth
        )
        out = []
        for index in np.argsort(-score, kind="stable"):
            out.append(_decode(space, candidates.values[index], candidates.active[index]))
            if taken is None or not taken.blocks(out[-1]):
                break
        return out

    first = ranked(_sample(space, good_enc, bandwidth, rng, n_candidates))
    if taken is None or not taken.blocks(first[-1]):
        return first[-1]
    more = _sample(space, good_enc, bandwidth, rng, n_candidates)
    fresh = _encode(space, unseen(space, taken, rng, n_candidates))
    second = ranked(_concat([more, fresh]))
    # Every candidate taken yet the space not exhausted (unseen configurations too
    # rare to draw): the best one, a repeat.
    return second[-1] if not taken.blocks(second[-1]) else first[0]


def propose_pooled(
    space: Space,
    good_enc: _Encoded,
    bad_enc: _Encoded,
    rng: np.random.Generator,
    count: int,
    taken: Taken,
) -> list[dict[str, PlainValue]]:
    """Up to ``count`` points from one shared pool of candidates sampled from ``l``
    (module docstring, "Large batches"): the best by ``log l - log g`` that ``taken``
    does not block, each added to ``g`` (a kernel more) before the next is picked.
    Fewer when the pool runs out of unblocked candidates; each pick is added to
    ``taken``."""
    n_total = good_enc.values.shape[0] + bad_enc.values.shape[0]
    bandwidth = max(BANDWIDTH * max(n_total, 1) ** (-1.0 / (len(space) + 4)), MIN_BANDWIDTH)
    pool = _sample(space, good_enc, bandwidth, rng, min(POOL_MAX, POOL_PER_POINT * count))
    log_l = _log_density(space, pool, good_enc, bandwidth)
    # log g for the pool, POOL_CHUNK candidates at a time (a candidates x bad points
    # matrix per parameter); shifting by log(n + 1) makes it the unnormalised log of
    # the mixture, to which a pick's kernel is then added.
    shift = math.log(bad_enc.values.shape[0] + 1)
    log_g = (
        np.concatenate(
            [
                _log_density(
                    space,
                    _Encoded(pool.values[i : i + POOL_CHUNK], pool.active[i : i + POOL_CHUNK]),
                    bad_enc,
                    bandwidth,
                )
                for i in range(0, pool.values.shape[0], POOL_CHUNK)
            ]
        )
        + shift
    )
    score = log_l - log_g
    chosen: list[dict[str, PlainValue]] = []
    while len(chosen) < count:
        index = int(np.argmax(score))
        if score[index] == -np.inf:
            break
        score[index] = -np.inf
        params = _decode(space, pool.values[index], pool.active[index])
        if taken.blocks(params):
            continue
        chosen.append(params)
        taken.add(params)
        one = _Encoded(pool.values[index : index + 1], pool.active[index : index + 1])
        log_g = np.logaddexp(log_g, _log_kernels(space, pool, one, bandwidth)[:, 0])
        live = np.isfinite(score)
        score[live] = log_l[live] - log_g[live]
    return chosen


def _concat(parts: Sequence[_Encoded]) -> _Encoded:
    return _Encoded(
        np.concatenate([p.values for p in parts]), np.concatenate([p.active for p in parts])
    )


def _encode(space: Space, points: Sequence[Mapping[str, PlainValue]]) -> _Encoded:
    values = np.full((len(points), len(space)), 0.5)
    active = np.zeros((len(points), len(space)), dtype=bool)
    for i, params in enumerate(points):
        for j, p in enumerate(space.params):
            if p.name not in params or not space.is_active(p.name, params):
                continue
            if p.kind is Kind.CATEGORICAL:
                index = p.index_of(params[p.name])
                if index is None:
                    continue
                values[i, j] = index
            else:
                values[i, j] = p.encode(params[p.name], CategoricalEncoding.INDEX)[0]
            active[i, j] = True
    return _Encoded(values, active)


def _sample(
    space: Space,
    good: _Encoded,
    bandwidth: float,
    rng: np.random.Generator,
    count: int,
) -> _Encoded:
    n_good = good.values.shape[0]
    # Component n_good is the prior (uniform-ish broad kernel); weight 1/(n+1).
    component = rng.integers(0, n_good + 1, size=count)
    values = np.zeros((count, len(space)))
    active = np.zeros((count, len(space)), dtype=bool)
    index = {p.name: j for j, p in enumerate(space.params)}
    for row in range(count):
        k = component[row]
        chosen: dict[str, PlainValue] = {}
        for p in parents_first(space):
            j = index[p.name]
            if not space.is_active(p.name, chosen):
                continue
            centred = k < n_good and good.active[k, j]
            if p.kind is Kind.CATEGORICAL:
                n_choices = len(p.values)
                if centred and rng.random() > EPSILON:
                    choice = int(good.values[k, j])
                else:
                    choice = int(rng.integers(n_choices))
                values[row, j] = choice
                chosen[p.name] = p.values[choice]
            else:
                mu, sigma = (good.values[k, j], bandwidth) if centred else (0.5, PRIOR_BANDWIDTH)
                values[row, j] = _truncnorm_draw(mu, sigma, rng)
                # Decoded so an ordinal parent can gate its children.
                chosen[p.name] = p.decode([values[row, j]])
            active[row, j] = True
    return _Encoded(values, active)


def _log_density(space: Space, x: _Encoded, data: _Encoded, bandwidth: float) -> np.ndarray:
    """log of the Parzen mixture (data kernels + prior) at each row of ``x``."""
    total = _log_kernels(space, x, data, bandwidth, prior=True)
    n = data.values.shape[0]
    peak = total.max(axis=1, keepdims=True)
    return peak[:, 0] + np.log(np.exp(total - peak).sum(axis=1)) - math.log(n + 1)


def _log_kernels(
    space: Space, x: _Encoded, data: _Encoded, bandwidth: float, prior: bool = False
) -> np.ndarray:
    """log kernel of each data point (summed over parameters) at each row of ``x``:
    shape (rows, n), plus a last column for the prior component when ``prior``."""
    n = data.values.shape[0]
    total = np.zeros((x.values.shape[0], n + 1 if prior else n))
    for j, p in enumerate(space.params):
        xa = x.active[:, j][:, None]
        both = xa & data.active[:, j][None, :]
        if p.kind is Kind.CATEGORICAL:
            k = len(p.values)
            same = x.values[:, j][:, None] == data.values[:, j][None, :]
            log_k = np.where(same, math.log(1 - EPSILON + EPSILON / k), math.log(EPSILON / k))
            log_prior = np.full(x.values.shape[0], -math.log(k))
        else:
            log_k = _truncnorm_logpdf(
                x.values[:, j][:, None], data.values[:, j][None, :], bandwidth
            )
            log_prior = _truncnorm_logpdf(x.values[:, j], 0.5, PRIOR_BANDWIDTH)
        # A trial where this parameter was inactive says nothing about it: use the
        # prior density instead of a kernel, so it neither helps nor hurts.
        total[:, :n] += np.where(both, log_k, np.where(xa, log_prior[:, None], 0.0))
        if prior:
            total[:, n] += np.where(x.active[:, j], log_prior, 0.0)
    return total


def _truncnorm_logpdf(x: np.ndarray, mu: np.ndarray | float, sigma: float) -> np.ndarray:
    mass = ndtr((1 - np.asarray(mu)) / sigma) - ndtr(-np.asarray(mu) / sigma)
    z = (x - mu) / sigma
    return -0.5 * z**2 - math.log(sigma * math.sqrt(2 * math.pi)) - np.log(np.maximum(mass, 1e-300))


def _truncnorm_draw(mu: float, sigma: float, rng: np.random.Generator) -> float:
    low, high = ndtr(-mu / sigma), ndtr((1 - mu) / sigma)
    u = low + rng.random() * (high - low)
    return float(min(max(mu + sigma * ndtri(min(max(u, 1e-12), 1 - 1e-12)), 0.0), 1.0))


def _decode(space: Space, values: np.ndarray, active: np.ndarray) -> dict[str, PlainValue]:
    out: dict[str, PlainValue] = {}
    for j, p in enumerate(space.params):
        if not active[j]:
            continue
        if p.kind is Kind.CATEGORICAL:
            out[p.name] = p.values[int(values[j])]
        else:
            out[p.name] = p.decode([float(values[j])])
    return out
