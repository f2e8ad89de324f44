"""The broad quality suite's synthetic problems (issue 18): objectives with known optima
over continuous, integer, ordinal, categorical, mixed and conditional spaces, some
noisy. The tabular benchmarks are in ``tabular.py``; ``suite.py`` runs them all.

| name                 | group       | space                                       | optimum    |
|----------------------|-------------|---------------------------------------------|------------|
| branin               | tuned-on    | 2 floats                                    | 0.397887   |
| hartmann6            | tuned-on    | 6 floats                                    | -3.32237   |
| mixed                | tuned-on    | 2 floats, log float, int, categorical(4)    | 0          |
| conditional          | tuned-on    | categorical(3) parent, per-branch children  | 0          |
| hartmann3            | continuous  | 3 floats                                    | -3.86278   |
| rosenbrock4          | continuous  | 4 floats in [-2, 2] (a curved valley)       | 0          |
| ackley10             | continuous  | 10 floats in [-5, 10] (many local minima)   | 0          |
| hartmann6_in_20d     | irrelevant  | 20 floats, 14 of which do not matter        | -3.32237   |
| int_bowl             | integer     | 6 ints in [0, 50] (coupled bowl)            | 0          |
| ints                 | integer     | 4 ints in [0, 7]                            | enumerated |
| ordinal              | ordinal     | 4 ordinal grids (lr, batch, layers, dropout) | enumerated |
| categorical6x5       | categorical | 6 categoricals of 5 choices                 | enumerated |
| mixed_grid           | mixed       | 2 categoricals, an int, an ordinal          | enumerated |
| conditional_model    | conditional | model; per-model int/ordinal/float children | 0          |
| hartmann6_noisy      | noisy       | hartmann6 + N(0, 0.1^2) each time           | -3.32237   |
| categorical6x5_noisy | noisy       | categorical6x5 + N(0, 0.1^2) each time      | enumerated |

All are minimised. A noisy problem's ``objective`` is its true value and ``observe``
adds the noise; the harness scores the true value of the recommended configuration.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
from ladder.params import PlainValue
from ladder.space import Kind, ParamSpec, Space

from bench.quality import distinct_configs
from bench.quality.problems import PROBLEMS as TUNED_ON
from bench.quality.problems import Problem, hartmann6


@dataclass(frozen=True)
class SuiteProblem(Problem):
    """A Problem with the suite's extras: its group, a version (part of the cache key:
    bump it when the objective or space changes), and observation noise."""

    group: str = ""
    version: int = 1
    noise_sd: float = 0.0

    @property
    def noisy(self) -> bool:
        return self.noise_sd > 0

    def observe(self, params: Mapping[str, PlainValue], rng: np.random.Generator) -> float:
        """What a study sees: the true value plus Gaussian noise (``rng``: the run's
        noise stream)."""
        return self.objective(params) + self.noise_sd * float(rng.standard_normal())

    def optuna_params(self, trial: object) -> dict[str, PlainValue]:
        """Optuna's mirror of the space; an ordinal grid is asked as the index of its
        value (``suggest_int``), so Optuna keeps its order as Ladder and Ax do."""
        params: dict[str, PlainValue] = {}
        for p in self.space.params:  # parents are declared before children here
            if not self.space.is_active(p.name, params):
                continue
            if p.kind is Kind.FLOAT:
                params[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)  # type: ignore[attr-defined]
            elif p.kind is Kind.INT:
                params[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)  # type: ignore[attr-defined]
            elif p.kind is Kind.ORDINAL:
                index = trial.suggest_int(p.name, 0, len(p.values) - 1)  # type: ignore[attr-defined]
                params[p.name] = p.values[index]
            else:
                params[p.name] = trial.suggest_categorical(p.name, list(p.values))  # type: ignore[attr-defined]
        return params


def suite_problem(problem: Problem, group: str, **extra: object) -> SuiteProblem:
    return SuiteProblem(
        problem.name, problem.space, problem.objective, problem.optimum, group=group, **extra
    )  # type: ignore[arg-type]


def _floats(names: list[str], low: float, high: float) -> Space:
    return Space([ParamSpec(n, Kind.FLOAT, low=low, high=high) for n in names])


_H3_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
_H3_A = np.array([[3.0, 10, 30], [0.1, 10, 35], [3.0, 10, 30], [0.1, 10, 35]])
_H3_P = 1e-4 * np.array(
    [[3689, 1170, 2673], [4699, 4387, 7470], [1091, 8732, 5547], [381, 5743, 8828]]
)
HARTMANN3_ARGMIN = (0.114614, 0.555649, 0.852547)


def hartmann3(params: Mapping[str, PlainValue]) -> float:
    x = np.array([float(params[f"x{i}"]) for i in range(3)])
    return float(-np.sum(_H3_ALPHA * np.exp(-np.sum(_H3_A * (x - _H3_P) ** 2, axis=1))))


def rosenbrock4(params: Mapping[str, PlainValue]) -> float:
    x = [float(params[f"x{i}"]) for i in range(4)]
    return float(sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(3)))


def ackley10(params: Mapping[str, PlainValue]) -> float:
    x = np.array([float(params[f"x{i}"]) for i in range(10)])
    return float(
        -20 * math.exp(-0.2 * math.sqrt(np.mean(x**2)))
        - math.exp(np.mean(np.cos(2 * math.pi * x)))
        + 20
        + math.e
    )


# hartmann6 on 6 of 20 coordinates, scattered so the relevant ones are not a prefix.
RELEVANT_OF_20 = (2, 5, 9, 11, 16, 19)


def hartmann6_in_20d(params: Mapping[str, PlainValue]) -> float:
    return hartmann6({f"x{i}": params[f"x{j}"] for i, j in enumerate(RELEVANT_OF_20)})


INT_BOWL_TARGET = (37, 4, 22, 45, 11, 30)
_INT_BOWL_WEIGHTS = (1.0, 0.5, 2.0, 0.25, 1.0, 0.7)


def int_bowl(params: Mapping[str, PlainValue]) -> float:
    """Weighted squared distance to an integer target plus a coupling of the first two
    coordinates that is zero at the target (so the target is the unique minimum)."""
    x = [int(params[f"n{i}"]) for i in range(6)]
    t = INT_BOWL_TARGET
    bowl = sum(w * (a - b) ** 2 for w, a, b in zip(_INT_BOWL_WEIGHTS, x, t, strict=True))
    return float(bowl + 0.5 * ((x[0] - x[1]) - (t[0] - t[1])) ** 2) / 100


_MODEL_OFFSETS = {"mlp": 0.0, "cnn": 0.15, "gbm": 0.3}


def conditional_model(params: Mapping[str, PlainValue]) -> float:
    """A model choice with per-model children of different kinds; the mlp branch holds
    the optimum (0 at layers 3, width 256, lr 1e-3, weight_decay irrelevant)."""
    model = str(params["model"])
    shared = 0.5 * (float(params["dropout"]) - 0.1) ** 2
    if model == "mlp":
        return (
            shared
            + 0.05 * (int(params["mlp_layers"]) - 3) ** 2
            + 0.1 * (math.log2(float(params["mlp_width"])) - 8) ** 2
            + 0.3 * (math.log10(float(params["mlp_lr"])) + 3) ** 2
        )
    if model == "cnn":
        return (
            _MODEL_OFFSETS[model]
            + shared
            + 0.1 * (int(params["cnn_kernel"]) - 5) ** 2 / 4
            + 0.3 * (math.log10(float(params["cnn_lr"])) + 2.5) ** 2
        )
    return (
        _MODEL_OFFSETS[model]
        + shared
        + 0.05 * (int(params["gbm_depth"]) - 6) ** 2
        + 2 * (float(params["gbm_eta"]) - 0.1) ** 2
    )


def _child(spec: ParamSpec, parent: str, index: int) -> ParamSpec:
    return replace(spec, parent=parent, parent_indexes=frozenset({index}))


_CONDITIONAL_MODEL_SPACE = Space(
    [
        ParamSpec("model", Kind.CATEGORICAL, values=("mlp", "cnn", "gbm")),
        ParamSpec("dropout", Kind.FLOAT, low=0.0, high=0.5),
        _child(ParamSpec("mlp_layers", Kind.INT, low=1, high=8), "model", 0),
        _child(
            ParamSpec("mlp_width", Kind.ORDINAL, values=(32, 64, 128, 256, 512, 1024)), "model", 0
        ),
        _child(ParamSpec("mlp_lr", Kind.FLOAT, low=1e-5, high=1e-1, log=True), "model", 0),
        _child(ParamSpec("cnn_kernel", Kind.ORDINAL, values=(1, 3, 5, 7)), "model", 1),
        _child(ParamSpec("cnn_lr", Kind.FLOAT, low=1e-5, high=1e-1, log=True), "model", 1),
        _child(ParamSpec("gbm_depth", Kind.INT, low=2, high=12), "model", 2),
        _child(ParamSpec("gbm_eta", Kind.FLOAT, low=0.01, high=1.0, log=True), "model", 2),
    ]
)


def _problem(
    name: str,
    space: Space,
    objective: Callable[[Mapping[str, PlainValue]], float],
    optimum: float,
    group: str,
    **extra: object,
) -> SuiteProblem:
    return SuiteProblem(name, space, objective, optimum, group=group, **extra)  # type: ignore[arg-type]


def _finite(name: str) -> Problem:
    return distinct_configs.PROBLEMS[name]


SYNTHETIC: dict[str, SuiteProblem] = {
    **{name: suite_problem(p, "tuned-on") for name, p in TUNED_ON.items()},
    "hartmann3": _problem(
        "hartmann3", _floats([f"x{i}" for i in range(3)], 0, 1), hartmann3, -3.86278, "continuous"
    ),
    "rosenbrock4": _problem(
        "rosenbrock4", _floats([f"x{i}" for i in range(4)], -2, 2), rosenbrock4, 0.0, "continuous"
    ),
    "ackley10": _problem(
        "ackley10", _floats([f"x{i}" for i in range(10)], -5, 10), ackley10, 0.0, "continuous"
    ),
    "hartmann6_in_20d": _problem(
        "hartmann6_in_20d",
        _floats([f"x{i}" for i in range(20)], 0, 1),
        hartmann6_in_20d,
        TUNED_ON["hartmann6"].optimum,
        "irrelevant",
    ),
    "int_bowl": _problem(
        "int_bowl",
        Space([ParamSpec(f"n{i}", Kind.INT, low=0, high=50) for i in range(6)]),
        int_bowl,
        0.0,
        "integer",
    ),
    "ints": suite_problem(_finite("ints"), "integer"),
    "ordinal": suite_problem(_finite("ordinal"), "ordinal"),
    "categorical6x5": suite_problem(_finite("categorical6x5"), "categorical"),
    "mixed_grid": suite_problem(_finite("mixed"), "mixed"),
    "conditional_model": _problem(
        "conditional_model", _CONDITIONAL_MODEL_SPACE, conditional_model, 0.0, "conditional"
    ),
    "hartmann6_noisy": suite_problem(TUNED_ON["hartmann6"], "noisy", noise_sd=0.1),
    "categorical6x5_noisy": suite_problem(_finite("categorical6x5"), "noisy", noise_sd=0.1),
}
# A reused problem is renamed to its key here (distinct_configs' "mixed" is "mixed_grid").
SYNTHETIC = {name: replace(p, name=name) for name, p in SYNTHETIC.items()}
