"""Parameter importances: how much of the objective's variation each parameter
explains, from a random forest fitted on the completed trials (scikit-learn) and its
permutation importance (the drop in the forest's R^2 when one parameter's column is
shuffled; robust to parameters with many distinct values, unlike impurity importance).

Categorical parameters enter as their choice's index (a forest splits an index into
any grouping of choices); an inactive conditional parameter as a value below every
real one, so "not set" is a value the forest can split on. At most ``MAX_TRIALS``
trials are used (the best ones and an even sample of the rest): the figure must stay
cheap for a study of 20,000 trials.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ladder.dashboard.axes import ParamAxis
from ladder.dashboard.sampling import even_sample
from ladder.dashboard.trials import Trial

MAX_TRIALS = 1000
# Rows the permutations are scored on (an even sample of the fitted ones): the
# forest's predictions are most of the cost.
SCORED_ROWS = 500
MIN_TRIALS = 8
TREES = 32
REPEATS = 3


@dataclass(frozen=True)
class Importances:
    names: list[str]     # most important first
    values: list[float]  # shares summing to 1 (0 each when nothing explains anything)
    trials_used: int
    note: str = ""       # why there are none, when ``names`` is empty


def feature_matrix(trials: Sequence[Trial], axes: Sequence[ParamAxis]) -> np.ndarray:
    """One row per trial, one column per axis; a missing value is one below the
    column's lowest value (0 ... -1 for an all-missing column)."""
    matrix = np.array(
        [[_or_nan(a.encode(t.params.get(a.name))) for a in axes] for t in trials], dtype=float
    ).reshape(len(trials), len(axes))
    for j in range(matrix.shape[1]):
        column = matrix[:, j]
        missing = np.isnan(column)
        if missing.any():
            low = np.nanmin(column) if (~missing).any() else 0.0
            column[missing] = low - 1.0
    return matrix


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _r2(y: np.ndarray, predicted: np.ndarray) -> float:
    spread = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - predicted) ** 2).sum()) / spread if spread > 0 else 0.0


def permutation_drops(model: Any, x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Per column: the mean drop in R^2 over ``REPEATS`` shuffles of that column
    (scikit-learn's permutation importance, with every shuffled copy predicted in one
    call: per-call overhead is most of its cost on a few hundred rows)."""
    rng = np.random.default_rng(seed)
    rows, columns = x.shape
    copies = np.repeat(x[np.newaxis], columns * REPEATS, axis=0)
    for j in range(columns):
        for r in range(REPEATS):
            copies[j * REPEATS + r, :, j] = rng.permutation(x[:, j])
    predicted = model.predict(copies.reshape(-1, columns)).reshape(columns, REPEATS, rows)
    baseline = _r2(y, model.predict(x))
    return np.array([
        baseline - np.mean([_r2(y, predicted[j, r]) for r in range(REPEATS)])
        for j in range(columns)
    ])


def importances(
    trials: Sequence[Trial], axes: Sequence[ParamAxis], maximize: bool, seed: int = 0
) -> Importances:
    """The importances of ``axes`` over the completed ``trials``."""
    from sklearn.ensemble import RandomForestRegressor

    done = [t for t in trials if t.has_value]
    if len(done) < MIN_TRIALS or not axes:
        return Importances([], [], len(done), f"needs {MIN_TRIALS} completed trials with a "
                           f"value and at least one parameter ({len(done)} so far)")
    ranked = sorted(range(len(done)), key=lambda i: done[i].value, reverse=maximize)
    keep = even_sample(len(done), MAX_TRIALS, keep=ranked[: MAX_TRIALS // 10])
    used = [done[i] for i in keep]
    x = feature_matrix(used, axes)
    y = np.array([t.value for t in used], dtype=float)
    if np.ptp(y) == 0:
        return Importances([], [], len(used), "every completed trial has the same value")
    forest = RandomForestRegressor(
        n_estimators=TREES, min_samples_leaf=3, max_features=0.7, random_state=seed, n_jobs=1
    ).fit(x, y)
    scored = even_sample(len(used), SCORED_ROWS)
    raw = np.clip(permutation_drops(forest, x[scored], y[scored], seed), 0.0, None)
    total = float(raw.sum())
    shares = raw / total if total > 0 else raw
    order = sorted(range(len(axes)), key=lambda j: (-shares[j], axes[j].name))
    return Importances(
        [axes[j].name for j in order], [float(shares[j]) for j in order], len(used)
    )
