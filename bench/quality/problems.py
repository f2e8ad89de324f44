"""Benchmark objectives with known optima, each with a Ladder Space and an Optuna
define-by-run mirror of the same space (so both libraries search identical domains).

| name        | dim | kind                                            | optimum      |
|-------------|-----|-------------------------------------------------|--------------|
| branin      | 2   | continuous                                      | 0.397887     |
| hartmann6   | 6   | continuous                                      | -3.32237     |
| mixed       | 5   | 2 floats, 1 log float, 1 int, 1 categorical (4)  | 0            |
| conditional | 4-5 | categorical parent with per-branch children      | 0            |

All are minimised; regret = value - optimum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
from ladder.params import PlainValue
from ladder.space import Kind, ParamSpec, Space


@dataclass(frozen=True)
class Problem:
    name: str
    space: Space
    objective: Callable[[Mapping[str, PlainValue]], float]
    optimum: float

    def regret(self, value: float) -> float:
        return max(0.0, value - self.optimum)

    def optuna_params(self, trial: object) -> dict[str, PlainValue]:
        """Ask ``trial`` (an optuna.Trial) for a point of the same space."""
        return suggest_optuna(self.space, trial)


def suggest_optuna(space: Space, trial: object) -> dict[str, PlainValue]:
    params: dict[str, PlainValue] = {}
    for p in space.params:  # parents are declared before children in these problems
        if not space.is_active(p.name, params):
            continue
        if p.kind is Kind.FLOAT:
            params[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)  # type: ignore[attr-defined]
        elif p.kind is Kind.INT:
            params[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)  # type: ignore[attr-defined]
        else:
            params[p.name] = trial.suggest_categorical(p.name, list(p.values))  # type: ignore[attr-defined]
    return params


def branin(params: Mapping[str, PlainValue]) -> float:
    x1, x2 = float(params["x1"]), float(params["x2"])
    b, c = 5.1 / (4 * math.pi**2), 5 / math.pi
    t = 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


_H6_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
_H6_A = np.array(
    [
        [10, 3, 17, 3.5, 1.7, 8],
        [0.05, 10, 17, 0.1, 8, 14],
        [3, 3.5, 1.7, 10, 17, 8],
        [17, 8, 0.05, 10, 0.1, 14],
    ]
)
_H6_P = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ]
)


def hartmann6(params: Mapping[str, PlainValue]) -> float:
    x = np.array([float(params[f"x{i}"]) for i in range(6)])
    return float(-np.sum(_H6_ALPHA * np.exp(-np.sum(_H6_A * (x - _H6_P) ** 2, axis=1))))


_MIXED_CENTRES = {
    "a": (0.2, 0.7, 0.0),
    "b": (0.8, 0.3, 0.4),
    "c": (0.5, 0.5, 0.3),
    "d": (0.1, 0.1, 1.0),
}


def mixed(params: Mapping[str, PlainValue]) -> float:
    """Each category moves the continuous optimum and adds its own offset (a is best)."""
    cx, cy, offset = _MIXED_CENTRES[str(params["kind"])]
    x, y = float(params["x"]), float(params["y"])
    lr = math.log10(float(params["lr"]))
    layers = int(params["layers"])
    return (
        offset
        + 4 * (x - cx) ** 2
        + 4 * (y - cy) ** 2
        + 0.5 * (lr + 2.5) ** 2
        + 0.05 * (layers - 6) ** 2
        + 0.5 * math.sin(6 * x) ** 2 * (x - cx) ** 2
    )


def conditional(params: Mapping[str, PlainValue]) -> float:
    """An optimizer choice with branch-specific children; adam's branch holds the optimum."""
    shared = 2 * (float(params["width"]) - 0.3) ** 2
    branch = str(params["optimizer"])
    if branch == "sgd":
        lr = math.log10(float(params["sgd_lr"]))
        return 0.3 + shared + 0.5 * (lr + 1) ** 2 + 2 * (float(params["momentum"]) - 0.9) ** 2
    if branch == "adam":
        lr = math.log10(float(params["adam_lr"]))
        return shared + 0.5 * (lr + 3) ** 2 + 20 * (float(params["beta"]) - 0.95) ** 2
    lr = math.log10(float(params["rms_lr"]))
    return 0.6 + shared + 0.5 * (lr + 2) ** 2


def _float(name: str, low: float, high: float, log: bool = False, **cond: object) -> ParamSpec:
    return ParamSpec(name, Kind.FLOAT, low=low, high=high, log=log, **cond)  # type: ignore[arg-type]


def _child(spec: ParamSpec, parent: str, index: int) -> ParamSpec:
    return replace(spec, parent=parent, parent_indexes=frozenset({index}))


PROBLEMS: dict[str, Problem] = {
    "branin": Problem(
        "branin", Space([_float("x1", -5, 10), _float("x2", 0, 15)]), branin, 0.397887
    ),
    "hartmann6": Problem(
        "hartmann6", Space([_float(f"x{i}", 0, 1) for i in range(6)]), hartmann6, -3.32237
    ),
    "mixed": Problem(
        "mixed",
        Space(
            [
                _float("x", 0, 1),
                _float("y", 0, 1),
                _float("lr", 1e-5, 1, log=True),
                ParamSpec("layers", Kind.INT, low=1, high=12),
                ParamSpec("kind", Kind.CATEGORICAL, values=("a", "b", "c", "d")),
            ]
        ),
        mixed,
        0.0,
    ),
    "conditional": Problem(
        "conditional",
        Space(
            [
                ParamSpec("optimizer", Kind.CATEGORICAL, values=("sgd", "adam", "rmsprop")),
                _float("width", 0, 1),
                _child(_float("sgd_lr", 1e-5, 1, log=True), "optimizer", 0),
                _child(_float("momentum", 0, 1), "optimizer", 0),
                _child(_float("adam_lr", 1e-5, 1, log=True), "optimizer", 1),
                _child(_float("beta", 0.5, 0.999), "optimizer", 1),
                _child(_float("rms_lr", 1e-5, 1, log=True), "optimizer", 2),
            ]
        ),
        conditional,
        0.0,
    ),
}
