"""The load simulator's suggestion provenance: what served each suggestion, the exact
counts and fractions of its JSON summary, and the bowl objective. No stack."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from ladder.samplers import Proposal
from ladder.v1 import suggest_pb2

from services.suggest.service import served_by as service_served_by
from workers.loadsim import parse_args, space_of, suggestions_summary
from workers.loadsim_sim import ProcessResult, bowl_shift, curve_value, served_by


def suggestion(algorithm: str, fitted_on: int = 0, resumed: bool = False) -> suggest_pb2.Suggestion:
    return suggest_pb2.Suggestion(
        algorithm=algorithm, model_observations=fitted_on, resumed=resumed
    )


def test_served_by_names_fallbacks_models_and_the_rest_as_the_service_counts() -> None:
    cases = [
        ("gp", 40, "model"),
        ("gp", 0, "no-model"),  # the initial design
        ("tpe-fallback", 25, "tpe-fallback"),
        ("sobol-fallback", 0, "sobol-fallback"),
        ("quasi-random", 0, "no-model"),
        ("warm-start", 0, "no-model"),
    ]
    for algorithm, fitted_on, expected in cases:
        assert served_by(suggestion(algorithm, fitted_on)) == expected
        proposal = Proposal({}, 0, algorithm=algorithm, model_observations=fitted_on)
        assert service_served_by(proposal) == expected


def test_the_summary_counts_every_suggestion_exactly() -> None:
    one, two = ProcessResult(), ProcessResult()
    one.algorithms, one.served_by = {"gp": 95, "tpe-fallback": 5}, {"model": 95, "tpe-fallback": 5}
    two.algorithms, two.served_by = {"gp": 100}, {"model": 98, "no-model": 2}
    one.served_by_after_warmup, two.served_by_after_warmup = {"model": 90}, {"model": 9}
    two.served_by_after_warmup["tpe-fallback"] = 1
    one.unseen_observations, two.unseen_observations = [0, 3, 8], [1]
    one.suggest_latency_ms, two.suggest_latency_ms = [2.0] * 99 + [40.0], [3.0]
    one.suggest_latency_after_warmup_ms, two.suggest_latency_after_warmup_ms = [40.0], [3.0]
    one.idle_s, one.worker_s = 6.0, 100.0
    two.idle_s, two.worker_s = 4.0, 100.0
    summary = suggestions_summary([asdict(one), asdict(two)])
    assert summary["total"] == 200
    assert summary["by_algorithm"] == {"gp": 195, "tpe-fallback": 5}
    assert summary["served_by"] == {"model": 193, "tpe-fallback": 5, "no-model": 2}
    assert summary["model_served_fraction"] == 0.965
    assert summary["served_by_after_warmup"] == {"model": 99, "tpe-fallback": 1}
    assert summary["model_served_fraction_after_warmup"] == 0.99
    assert summary["model_unseen_observations"]["n"] == 4
    assert summary["suggest_latency_ms"]["p50"] == 2.0
    assert summary["suggest_latency_after_warmup_ms"]["n"] == 2
    assert summary["suggest_latency_after_warmup_ms"]["max"] == 40.0
    assert summary["worker_idle_fraction"] == 0.05
    assert suggestions_summary([asdict(ProcessResult())])["model_served_fraction"] is None


def test_the_bowl_objective_lowers_the_curve_near_its_centre() -> None:
    bounds = (("x0", 0.0, 1.0), ("x1", 0.0, 2.0))
    assert bowl_shift({"x0": 0.3, "x1": 0.6}, bounds) == pytest.approx(0.0)
    assert bowl_shift({"x0": 1.0, "x1": 0.6}, bounds) == pytest.approx(0.49)
    base = curve_value(7, "t1", 10)
    assert curve_value(7, "t1", 10, 0.25) == pytest.approx(base + 0.25, abs=1e-6)


def test_model_based_studies_are_asked_for_by_flags() -> None:
    options = parse_args(["--algorithm", "gp", "--dims", "6", "--objective", "bowl"])
    assert (options.algorithm, options.dims, options.objective) == ("gp", 6, "bowl")
    assert list(space_of(6)) == [f"x{i}" for i in range(6)] and list(space_of(1)) == ["x"]
    assert parse_args([]).algorithm == "random"
    with pytest.raises(SystemExit):
        parse_args(["--dims", "0"])
