"""Ax's Bayesian optimisation as a peer of the quality suite (``run.make_driver`` builds
it for sampler ``ax-bo``).

Why Ax and not Syne Tune: ``syne-tune`` 0.16 requires ``xgboost``, whose Linux wheel
pulls ``nvidia-nccl-cu12`` (351 MB) onto a CPU-only machine; ``ax-platform`` 1.3.1 is
maintained, installs without CUDA packages, and accepts the BoTorch this project pins.

Ax's ``Client`` with its default generation strategy (quasi-random initialisation,
extended while no result is in, then a BoTorch GP); running trials are pending to it,
as the harness's other workers' points are to Ladder. Its space mirrors Ladder's:
floats and ints (log where Ladder's are), ordinal grids as ordered choices,
categoricals as unordered ones. A conditional space is given flat and the objective
sees only the parameters active under the suggested parent (Ax's hierarchical spaces
are not used). On a noisy problem the study's recommendation is Ax's own
(``recommend``), as Ladder's is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ladder.params import PlainValue
from ladder.space import Kind, Space

from bench.quality.problems import Problem

METRIC = "y"


def ax_version() -> str:
    from importlib.metadata import version

    return f"ax-{version('ax-platform')}"


def ax_parameters(space: Space) -> list[Any]:
    from ax import ChoiceParameterConfig, RangeParameterConfig

    out: list[Any] = []
    for p in space.params:
        scaling = "log" if p.log else "linear"
        if p.kind is Kind.FLOAT:
            out.append(RangeParameterConfig(p.name, (p.low, p.high), "float", scaling=scaling))
        elif p.kind is Kind.INT:
            bounds = (int(p.low), int(p.high))
            out.append(RangeParameterConfig(p.name, bounds, "int", scaling=scaling))  # type: ignore[arg-type]
        elif p.kind is Kind.ORDINAL:
            floats = any(isinstance(v, float) for v in p.values)
            values = [float(v) for v in p.values] if floats else [int(v) for v in p.values]  # type: ignore[arg-type]
            kind = "float" if floats else "int"
            out.append(ChoiceParameterConfig(p.name, values, kind, is_ordered=True))
        else:
            values = [str(v) for v in p.values]
            out.append(ChoiceParameterConfig(p.name, values, "str", is_ordered=False))
    return out


def active_params(space: Space, config: Mapping[str, Any]) -> dict[str, PlainValue]:
    """The suggested values of the parameters active under it, as Ladder's values."""
    params: dict[str, PlainValue] = {}
    for p in space.params:  # parents are declared before children in the suite
        if not space.is_active(p.name, params):
            continue
        value = config[p.name]
        if p.kind is Kind.FLOAT:
            params[p.name] = float(value)
        elif p.kind is Kind.INT:
            params[p.name] = int(value)
        else:
            index = p.index_of(value)
            if index is None:
                raise ValueError(f"{p.name}: Ax suggested {value!r}, not one of {p.values}")
            params[p.name] = p.values[index]
    return params


class AxDriver:
    def __init__(self, problem: Problem, seed: int) -> None:
        import logging

        from ax import Client

        for name in ("ax", "ax.api.client", "ax.service"):
            logging.getLogger(name).setLevel(logging.ERROR)
        self.space = problem.space
        self.client = Client(random_seed=seed)
        self.client.configure_experiment(parameters=ax_parameters(problem.space))
        self.client.configure_optimization(objective=f"-{METRIC}")  # Ax maximises
        # With 8 workers the initial quasi-random trials are all asked before any
        # result is in: keep drawing them until the model has its data.
        self.client.configure_generation_strategy(
            initialization_random_seed=seed, allow_exceeding_initialization_budget=True
        )

    def ask(self, pending: Sequence[Mapping[str, PlainValue]]) -> tuple[object, dict]:
        trials = self.client.get_next_trials(max_trials=1)  # running trials stay pending
        if not trials:
            raise RuntimeError("Ax generated no trial")
        (index, config), *_ = trials.items()
        return index, active_params(self.space, config)

    def tell(self, key: object, params: Mapping[str, PlainValue], value: float) -> None:
        self.client.complete_trial(int(key), raw_data={METRIC: value})  # type: ignore[call-overload]

    @staticmethod
    def recommendation_version() -> int:
        return 1

    def recommend(self) -> dict[str, PlainValue]:
        """Ax's recommendation: ``get_best_parameterization``'s default, the evaluated
        arm whose model prediction is best (the best observed one if no model fits)."""
        config, *_ = self.client.get_best_parameterization(use_model_predictions=True)
        return active_params(self.space, config)
