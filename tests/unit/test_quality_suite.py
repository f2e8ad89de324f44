"""The quality suite's pure parts: each problem's optimum is its minimum, a noisy
problem is scored on the true value of the study's recommendation (its own where the
tool has one), and the statistics."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from ladder.params import PlainValue
from ladder.samplers.recommend import best_by_posterior_mean
from ladder.space import Kind, ParamSpec, Space

from bench.quality import ONE_THREAD, suite_stats
from bench.quality.distinct_configs import _configurations
from bench.quality.run import simulate
from bench.quality.suite import (
    OWN_RECOMMENDATION,
    PROBLEM_NAMES,
    PROBLEMS,
    SAMPLERS,
    auto_rule_evidence,
    plan,
    problem,
    run_version,
)
from bench.quality.suite_problems import (
    HARTMANN3_ARGMIN,
    INT_BOWL_TARGET,
    RELEVANT_OF_20,
    SYNTHETIC,
    SuiteProblem,
)
from bench.quality.tabular import TABLES, config_key, noise_and_spread, table

_H6_ARGMIN = (0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573)

# A minimiser of each continuous / conditional problem (finite ones are enumerated).
ARGMIN: dict[str, dict[str, PlainValue]] = {
    "branin": {"x1": math.pi, "x2": 2.275},
    "hartmann6": {f"x{i}": v for i, v in enumerate(_H6_ARGMIN)},
    "hartmann6_noisy": {f"x{i}": v for i, v in enumerate(_H6_ARGMIN)},
    "mixed": {"x": 0.2, "y": 0.7, "lr": 10**-2.5, "layers": 6, "kind": "a"},
    "conditional": {"optimizer": "adam", "width": 0.3, "adam_lr": 1e-3, "beta": 0.95},
    "hartmann3": {f"x{i}": v for i, v in enumerate(HARTMANN3_ARGMIN)},
    "rosenbrock4": {f"x{i}": 1.0 for i in range(4)},
    "ackley10": {f"x{i}": 0.0 for i in range(10)},
    "hartmann6_in_20d": {
        **{f"x{j}": 0.9 for j in range(20)},
        **{f"x{j}": _H6_ARGMIN[i] for i, j in enumerate(RELEVANT_OF_20)},
    },
    "int_bowl": {f"n{i}": t for i, t in enumerate(INT_BOWL_TARGET)},
    "conditional_model": {
        "model": "mlp",
        "dropout": 0.1,
        "mlp_layers": 3,
        "mlp_width": 256,
        "mlp_lr": 1e-3,
    },
}


def _is_finite(space: Space) -> bool:
    return all(p.kind is not Kind.FLOAT and p.parent is None for p in space.params)


def test_the_suite_covers_the_issues_kinds_of_problem() -> None:
    groups = {PROBLEMS[name].group for name in PROBLEM_NAMES}
    assert len(PROBLEM_NAMES) >= 15
    assert {
        "continuous",
        "irrelevant",
        "integer",
        "ordinal",
        "categorical",
        "mixed",
        "conditional",
        "noisy",
        "tabular",
    } <= groups


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_each_synthetic_optimum_is_the_minimum(name: str) -> None:
    problem = SYNTHETIC[name]
    if name not in ARGMIN:
        assert _is_finite(problem.space)
        values = [problem.objective(c) for c in _configurations(problem.space)]
        assert problem.optimum == pytest.approx(min(values), abs=1e-12)
        return
    assert problem.objective(ARGMIN[name]) == pytest.approx(problem.optimum, abs=1e-4)
    rng = np.random.default_rng(0)
    sample = [
        problem.objective(problem.space.sample_to_params(rng.random(problem.space.dim())))
        for _ in range(5000)
    ]
    assert min(sample) >= problem.optimum - 1e-5


@pytest.mark.parametrize("name", sorted(TABLES))
def test_each_table_optimum_is_its_best_mean_over_the_whole_grid(name: str) -> None:
    problem = PROBLEMS[name]
    grid = _configurations(problem.space)
    keys = {config_key(problem.space, c) for c in grid}
    assert keys == set(table(name))  # every configuration of the space is in the table
    means = [problem.objective(c) for c in grid]
    assert problem.optimum == min(means)
    best = grid[int(np.argmin(means))]
    results = problem.results(best)
    assert len(results) >= 2 and problem.objective(best) == pytest.approx(np.mean(results))
    rng = np.random.default_rng(1)
    assert {problem.observe(best, rng) for _ in range(50)} <= set(results.tolist())

    # The report's measure of how hard the table is to recommend on, in regret units.
    spread = noise_and_spread(name)
    regrets = sorted(m - problem.optimum for m in means)
    assert spread["configurations"] == len(grid)
    assert spread["regret_of_best_tenth"] == pytest.approx(np.quantile(regrets, 0.1))
    assert spread["seed_sd_median"] > 0


def _noisy_line(sd: float) -> SuiteProblem:
    def objective(params: Mapping[str, PlainValue]) -> float:
        return float(params["x"])

    space = Space([ParamSpec("x", Kind.FLOAT, low=0.0, high=1.0)])
    return SuiteProblem("line", space, objective, 0.0, group="noisy", noise_sd=sd)


def test_a_noisy_run_is_scored_on_the_true_value_of_the_best_observed_point() -> None:
    problem = _noisy_line(sd=0.5)
    run = simulate("line", "random", 3, 30, 4, problem=problem)
    # Replay the run: the same random points in launch order, the same noise stream
    # in completion order.
    rng = np.random.default_rng([3, 7])
    points = [problem.space.sample_to_params(rng.random(1)) for _ in range(30)]
    durations = np.random.default_rng([3, 1]).exponential(1.0, size=30)
    noise = np.random.default_rng([3, 2])
    launched = 0
    running: list[tuple[float, int]] = []
    now, best, chosen, expected = 0.0, math.inf, None, []
    while launched < 4:
        running.append((durations[launched], launched))
        launched += 1
    while running:
        running.sort()
        now, index = running.pop(0)
        observed = problem.observe(points[index], noise)
        if observed < best:
            best, chosen = observed, points[index]
        expected.append(problem.objective(chosen))
        if launched < 30:
            running.append((now + durations[launched], launched))
            launched += 1
    assert run["regret"] == pytest.approx(expected)
    # With this much noise the recommendation is sometimes not the best true point.
    truths = [float(p["x"]) for p in points]
    assert run["regret"][-1] >= min(truths)
    # Random search has no recommendation of its own: the best observed point is it.
    assert run["recommendation"] == "best-observed"
    assert suite_stats.final_regret(run) == run["recommended_regret"] == run["regret"][-1]


def test_a_noisy_run_is_scored_on_the_studys_own_recommendation_where_it_has_one() -> None:
    problem = _noisy_line(sd=0.5)
    drivers: list = []
    run = simulate("line", "ladder-gp", 3, 16, 4, problem=problem,
                   before_ask=lambda driver, _pending: drivers.append(driver))
    pick = best_by_posterior_mean(problem.space, drivers[0].observations, maximize=False)
    assert run["recommendation"] == "model"
    assert run["recommended_regret"] == problem.regret(problem.objective(pick.params))
    assert suite_stats.final_regret(run) == run["recommended_regret"]
    assert suite_stats.final_regret(suite_stats.best_observed(run)) == run["regret"][-1]


def test_the_runs_keyed_by_their_recommendation_are_those_whose_driver_has_one() -> None:
    from bench.quality.run import LadderDriver, OptunaDriver, RandomDriver, sampler_version
    from bench.quality.suite_peers import AxDriver

    drivers = {"ladder-gp": LadderDriver, "ladder-tpe": LadderDriver,
               "ladder-auto": LadderDriver, "optuna-tpe": OptunaDriver,
               "optuna-gp": OptunaDriver, "random": RandomDriver, "ax-bo": AxDriver}
    assert set(drivers) == set(SAMPLERS)
    assert {k for k, d in drivers.items() if hasattr(d, "recommend")} == OWN_RECOMMENDATION
    # Only noisy problems' runs of those samplers change key; the others stay cached.
    assert run_version("hpobench_kc1", "ax-bo") == f"{sampler_version('ax-bo')}+recommend-1"
    # Each tool's rule has its own version: Ladder's moves without redoing Ax's runs.
    from ladder.samplers import recommend

    ladder = f"{sampler_version('ladder-gp')}+recommend-{recommend.VERSION}"
    assert run_version("hpobench_kc1", "ladder-gp") == ladder
    assert run_version("hartmann6", "ladder-gp") == sampler_version("ladder-gp")
    assert run_version("hpobench_kc1", "optuna-gp") == sampler_version("optuna-gp")


def test_a_noiseless_run_is_scored_on_the_best_value() -> None:
    problem = _noisy_line(sd=0.0)
    run = simulate("line", "random", 0, 20, 4, problem=problem)
    assert "recommended_regret" not in run
    assert run["regret"] == sorted(run["regret"], reverse=True)
    rng = np.random.default_rng([0, 7])
    assert run["regret"][-1] == pytest.approx(min(float(rng.random()) for _ in range(20)))


def test_the_plan_puts_a_seeds_headline_runs_first_and_covers_autos_delegate() -> None:
    tasks = plan(["hartmann3", "categorical6x5"], ["ladder-auto", "random"], [0, 1], 100, 8)
    # AUTO is not run itself: its delegate is (the GP on both: auto.py's rule).
    assert ("hartmann3", "ladder-gp", 0, 100, 8) in tasks
    assert ("categorical6x5", "ladder-gp", 1, 100, 8) in tasks
    assert not any(kind == "ladder-tpe" for _, kind, *_ in tasks)
    assert not any(kind == "ladder-auto" for _, kind, *_ in tasks)
    assert tasks[0] == ("hartmann3", "random", 0, 100, 8)


def _fake_runs() -> list[dict]:
    finals = {
        ("p", "a"): [0.0, 0.1, 0.2],
        ("p", "b"): [1.0, 1.1, 1.2],
        ("p", "c"): [1.0, 1.1, 1.2],
        ("q", "a"): [0.5, 0.5, 0.5],
        ("q", "b"): [0.5, 0.5, 0.5],
        ("q", "c"): [0.0, 0.0, 0.1],
    }
    return [
        {"problem": p, "sampler": s, "seed": seed, "regret": [9.0, value]}
        for (p, s), values in finals.items()
        for seed, value in enumerate(values)
    ]


def test_quartiles_p_values_and_average_ranks_on_a_tiny_result_set() -> None:
    summary = suite_stats.summarize(_fake_runs(), ["a", "b", "c"])
    cell = summary["problems"]["p"]["samplers"]["a"]
    assert (cell["q1"], cell["median"], cell["q3"]) == pytest.approx((0.05, 0.1, 0.15))
    assert cell["seeds"] == [0, 1, 2]
    tests = summary["problems"]["p"]["pairwise_mann_whitney"]
    # 3 vs 3 fully separated: the exact two-sided p-value is 2 / C(6, 3) = 0.1.
    assert tests["a vs b"] == {"p_value": pytest.approx(0.1), "lower_median": "a",
                               "lower_ranked": "a"}
    assert tests["b vs c"] == {"p_value": pytest.approx(1.0), "lower_median": None,
                               "lower_ranked": None}
    assert summary["problems"]["q"]["pairwise_mann_whitney"]["a vs b"]["p_value"] == 1.0
    # p: a 1, b and c tie for 2-3 (2.5 each); q: c 1, a and b tie (2.5 each).
    assert summary["ranks_per_problem"]["p"] == {"a": 1.0, "b": 2.5, "c": 2.5}
    assert summary["average_rank"]["ranks"] == pytest.approx({"a": 1.75, "b": 2.5, "c": 1.75})
    assert summary["average_rank"]["problems"] == ["p", "q"]


def test_a_sampler_missing_on_a_problem_is_left_out_of_the_overall_ranking() -> None:
    runs = [r for r in _fake_runs() if not (r["problem"] == "q" and r["sampler"] == "c")]
    summary = suite_stats.summarize(runs, ["a", "b", "c"])
    # a and b over both problems: p a 1, b 2; q a tie (1.5 each).
    assert summary["average_rank"]["ranks"] == {"a": 1.25, "b": 1.75}
    assert summary["average_rank"]["left_out"] == ["c"]
    # All three over the problems where all three ran.
    assert summary["average_rank_common_problems"]["problems"] == ["p"]
    assert summary["average_rank_common_problems"]["ranks"] == {"a": 1.0, "b": 2.5, "c": 2.5}


def test_the_headline_ranking_leaves_the_other_samplers_out() -> None:
    summary = suite_stats.summarize(_fake_runs(), ["a", "b", "c"], headline=["a", "b"])
    assert summary["average_rank"]["ranks"] == {"a": 1.25, "b": 1.75}
    assert summary["average_rank_all_samplers"]["ranks"] == pytest.approx(
        {"a": 1.75, "b": 2.5, "c": 1.75}
    )


def test_a_significant_difference_behind_equal_medians_is_a_win_or_a_loss() -> None:
    """All zeros against zeros with a few misses: equal medians, and a difference."""
    runs = [{"problem": "z", "sampler": s, "seed": seed, "regret": [1.0, value]}
            for s, values in (("a", [0.0] * 20), ("b", [0.0] * 14 + [0.1] * 6))
            for seed, value in enumerate(values)]
    summary = suite_stats.summarize(runs, ["a", "b"])
    test = summary["problems"]["z"]["pairwise_mann_whitney"]["a vs b"]
    assert test["lower_median"] is None and test["lower_ranked"] == "a"
    assert test["p_value"] < 0.05
    assert suite_stats.versus(summary, "a", ["b"])["problems"]["z"]["outcome"] == "win"
    assert suite_stats.versus(summary, "b", ["a"])["problems"]["z"]["outcome"] == "loss"
    assert suite_stats.lower_ranked([1.0, 2.0], [2.0, 1.0]) == 0


def test_versus_counts_only_significant_differences_as_wins_or_losses() -> None:
    runs = _fake_runs()
    runs += [{"problem": "p", "sampler": "a", "seed": s, "regret": [0.0]} for s in range(3, 8)] + [
        {"problem": "p", "sampler": "b", "seed": s, "regret": [2.0]} for s in range(3, 8)
    ]
    summary = suite_stats.summarize(runs, ["a", "b", "c"])
    result = suite_stats.versus(summary, "a", ["b", "c"])
    # p: a's 8 values all below c's 3 (c: the lower median of b and c) -> p < 0.05,
    # a win; q: c is lower but 3 vs 3 cannot reach p < 0.05 -> a tie, not a loss.
    assert result["problems"]["p"]["outcome"] == "win"
    assert result["problems"]["p"]["peer"] == "c"
    assert result["problems"]["p"]["p_value"] < 0.05
    assert result["problems"]["q"]["peer"] == "c"
    assert result["problems"]["q"]["outcome"] == "tie"
    assert result["problems"]["q"]["p_value"] > 0.05
    assert result["counts"] == {"win": 1, "loss": 0, "tie": 1}
    # Holm over the two problems: p's value doubled (the smaller of two), q's kept above.
    p_value = result["problems"]["p"]["p_value"]
    assert result["problems"]["p"]["p_holm"] == pytest.approx(min(1.0, 2 * p_value))
    holm_win = 2 * p_value < 0.05
    assert result["counts_holm"] == {"win": int(holm_win), "loss": 0, "tie": 2 - int(holm_win)}


def _pair_runs(problem: str, gp: list[float], tpe: list[float]) -> list[dict]:
    return [
        {"problem": problem, "sampler": sampler, "seed": seed, "regret": [value]}
        for sampler, values in (("ladder-gp", gp), ("ladder-tpe", tpe))
        for seed, value in enumerate(values)
    ]


def test_shape_evidence_picks_the_better_sampler_per_shape_and_checks_the_rule() -> None:
    runs = (
        _pair_runs("smooth", [0.0] * 5, [1.0] * 5)  # GP far ahead on every seed
        + _pair_runs("smooth2", [0.2, 0.3, 0.1], [0.25, 0.2, 0.3])  # close: no winner
        + _pair_runs("grid", [1.0] * 5, [0.0] * 5)  # TPE far ahead
        + _pair_runs("flat", [0.0] * 3, [0.0] * 3)  # a tie: either choice agrees
        + _pair_runs("even", [0.0] * 5, [1.0] * 5)  # GP far ahead here ...
        + _pair_runs("even2", [0.2, 0.3, 0.1], [0.1, 0.2, 0.15])  # ... TPE a little here
    )
    summary = suite_stats.summarize(runs, ["ladder-gp", "ladder-tpe"])
    shapes = {"smooth": "c", "smooth2": "c", "grid": "g", "flat": "f", "absent": "x",
              "even": "e", "even2": "e"}
    rule = {"c": "gp", "g": "gp", "f": "tpe", "x": "gp", "e": "tpe"}
    evidence = suite_stats.shape_evidence(summary, shapes, rule)
    assert evidence["c"]["pick"] == "ladder-gp"
    assert evidence["c"]["significant_wins"] == {"ladder-gp": 1, "ladder-tpe": 0}
    assert evidence["c"]["problems"]["smooth2"]["winner"] is None
    assert evidence["c"]["agrees"] is True
    assert evidence["g"]["pick"] == "ladder-tpe"
    assert evidence["g"]["agrees"] is False  # the rule says GP where TPE won
    assert evidence["f"]["pick"] is None and evidence["f"]["agrees"] is True
    assert evidence["x"]["missing"] == ["absent"] and evidence["x"]["agrees"] is None
    # Equal average ranks (1.5 each): the significant win decides.
    assert evidence["e"]["average_rank"] == {"ladder-gp": 1.5, "ladder-tpe": 1.5}
    assert evidence["e"]["pick"] == "ladder-gp" and evidence["e"]["agrees"] is False


def test_a_run_counts_the_distinct_configurations_it_suggested() -> None:
    space = Space([ParamSpec("c", Kind.CATEGORICAL, values=("a", "b", "c"))])
    tiny = SuiteProblem("tiny", space, lambda p: float(p["c"] == "a"), 0.0, group="categorical")
    # Random search draws with repeats: 12 suggestions, 3 configurations at most.
    run = simulate("tiny", "random", 0, 12, 2, problem=tiny)
    assert run["distinct"] == 3
    # Ladder's TPE repeats none until the space is exhausted.
    assert simulate("tiny", "ladder-tpe", 0, 3, 2, problem=tiny)["distinct"] == 3
    runs = [{"problem": "tiny", "sampler": "s", "seed": seed, "regret": [0.0], "distinct": d}
            for seed, d in enumerate([3, 2, 3])]
    runs.append({"problem": "tiny", "sampler": "old", "seed": 0, "regret": [0.0]})
    table = suite_stats.distinct_configurations(runs, {"tiny": 3.0}, budget=12)
    assert table == {"tiny": {"possible": 3, "samplers": {
        "s": {"seeds": [0, 1, 2], "min": 2, "median": 3.0}}}}


def test_the_rule_evidence_compares_gp_and_tpe_on_their_best_observed_points() -> None:
    runs = _pair_runs("hpobench_kc1", [0.0] * 5, [1.0] * 5)
    for run in runs:  # recommendations that would reverse the order
        run["recommended_regret"] = 1.0 - run["regret"][-1]
    evidence = auto_rule_evidence(runs, ["hpobench_kc1"], budget=1)["1"]
    row = evidence["discrete"]["problems"]["hpobench_kc1"]
    assert row["medians"] == {"ladder-gp": 0.0, "ladder-tpe": 1.0}
    assert row["winner"] == "ladder-gp"


def test_each_suite_problem_has_the_shape_its_space_says() -> None:
    from ladder.samplers.auto import Shape, shape_of

    expected = {
        "branin": Shape.CONTINUOUS, "hartmann6_in_20d": Shape.CONTINUOUS,
        "mixed": Shape.MIXED, "fcnet_protein": Shape.MIXED,
        "conditional": Shape.TREE, "conditional_model": Shape.TREE,
        "categorical6x5": Shape.CATEGORICAL, "nb201_imagenet": Shape.CATEGORICAL,
        "mixed_grid": Shape.CATEGORICAL,
        "ints": Shape.DISCRETE, "ordinal": Shape.DISCRETE, "hpobench_kc1": Shape.DISCRETE,
    }
    for name, shape in expected.items():
        assert shape_of(PROBLEMS[name].space) is shape, name
    # Every shape but WIDE (wider than any suite space, so no evidence) is in the suite.
    assert {shape_of(PROBLEMS[n].space) for n in PROBLEM_NAMES} == set(Shape) - {Shape.WIDE}


def test_a_benchmark_process_runs_every_numeric_library_on_one_thread() -> None:
    # Two jobs on two cores with a thread per core each made Optuna GP's runs up to ten
    # times as slow; the package sets the limit before numpy or torch loads.
    probe = (
        "import bench.quality.suite, threadpoolctl, torch; "
        "print(max(p['num_threads'] for p in threadpoolctl.threadpool_info()), "
        "torch.get_num_threads())"
    )
    env = {k: v for k, v in os.environ.items() if k not in ONE_THREAD}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["1", "1"]


def test_the_noisy_recommendation_report_reads_both_picks_from_the_suite_cache() -> None:
    from bench.quality.noisy_recommendation import cells_of, noisy_problems
    from bench.quality.suite import key, problem

    name = "hpobench_kc1"
    runs = [
        {"problem": name, "problem_version": problem(name).version, "sampler": kind,
         "seed": seed, "budget": 100, "workers": 8, "version": run_version(name, kind),
         "regret": [1.0, 0.5], **extra}
        for seed in (0, 1)
        for kind, extra in (("ladder-gp", {"recommended_regret": 0.0}), ("optuna-gp", {}),
                            ("ax-bo", {"recommended_regret": 0.25}))
    ]
    stale = {**runs[0], "version": "gp-0", "seed": 7}  # another sampler version: not read
    cells = cells_of({key(r): r for r in [*runs, stale]}, name)
    assert cells == {
        "ladder best observed": {0: 0.5, 1: 0.5}, "ladder recommended": {0: 0.0, 1: 0.0},
        "ax-bo best observed": {0: 0.5, 1: 0.5}, "ax-bo recommended": {0: 0.25, 1: 0.25},
        "optuna-gp best observed": {0: 0.5, 1: 0.5},
    }
    assert "categorical6x5_noisy" in noisy_problems() and "hartmann6" not in noisy_problems()
    assert name in noisy_problems()


def test_the_best_observed_view_scores_every_run_without_its_recommendation() -> None:
    from bench.quality.suite import best_observed_view

    runs = [
        {"problem": "p", "sampler": kind, "seed": seed, "regret": [observed], **extra}
        for seed in range(6)
        for kind, observed, extra in (
            ("ladder-auto", 1.0, {"recommended_regret": 0.0}),  # its recommendation wins
            ("optuna-gp", 0.5, {}),
            ("optuna-tpe", 0.7, {}),
        )
    ]
    samplers = ["ladder-auto", "optuna-gp", "optuna-tpe"]
    headline = suite_stats.versus(suite_stats.summarize(runs, samplers), "ladder-auto",
                                  ["optuna-gp", "optuna-tpe"])
    view = best_observed_view(runs, samplers)
    assert headline["problems"]["p"]["outcome"] == "win"
    assert view["ladder_auto_vs_best_optuna"]["problems"]["p"]["outcome"] == "loss"
    assert view["average_rank"]["ranks"]["ladder-auto"] == 3.0


def test_the_holdout_keeps_each_runs_observations_and_scores_every_rule_on_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from bench.quality import recommendation_holdout as holdout
    from bench.quality import run as harness

    monkeypatch.setattr(holdout, "BUDGET", 12)
    path = tmp_path / "histories.jsonl.gz"
    runs = holdout.collect(path, ["categorical6x5_noisy"], [100], jobs=1)
    assert harness.LadderDriver is not holdout.RecordingDriver  # the harness is restored
    assert len(runs[0]["observations"]) == 12
    assert holdout.load_histories(path) == {("categorical6x5_noisy", 100): runs[0]}
    picked = holdout.picks(runs[0])
    best_params, _ = min(runs[0]["observations"], key=lambda o: o[1])
    noisy = problem("categorical6x5_noisy")
    assert picked["best observed"] == noisy.regret(noisy.objective(best_params))
    assert set(picked) == {"best observed", "posterior mean", "calibrated"}


def test_holm_adjusts_each_p_value_by_its_rank_and_keeps_the_order() -> None:
    adjusted = suite_stats.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005, "e": None})
    assert adjusted.pop("e") is None
    assert adjusted == pytest.approx({"d": 0.02, "a": 0.03, "c": 0.06, "b": 0.06})


def test_a_replication_report_pools_a_read_only_cache_with_its_own(tmp_path: Path) -> None:
    import json

    from bench.quality.suite import main, problem

    name = "branin"

    def run(kind: str, seed: int, final: float) -> dict:
        return {"problem": name, "problem_version": problem(name).version, "sampler": kind,
                "seed": seed, "budget": 100, "workers": 8, "version": run_version(name, kind),
                "regret": [1.0] * 99 + [final], "distinct": 100, "ask_seconds_median": 0.01,
                "wall_seconds": 1.0}

    suite_cache, own_cache = tmp_path / "suite.jsonl", tmp_path / "replication.jsonl"
    kinds = ("random", "optuna-tpe")
    suite_cache.write_text(
        "".join(json.dumps(run(k, seed, 0.5)) + "\n" for k in kinds for seed in (0, 1)))
    own_cache.write_text(
        "".join(json.dumps(run(k, seed, 0.1)) + "\n" for k in kinds for seed in (5, 6)))
    before = suite_cache.read_text()
    main(["--report-only", "--problems", name, "--samplers", "random,optuna-tpe",
          "--first-seed", "0", "--seeds", "7", "--cache", str(own_cache),
          "--read-cache", str(suite_cache), "--out", str(tmp_path / "pooled")])
    report = json.loads((tmp_path / "pooled.json").read_text())
    cell = report["problems"][name]["samplers"]["random"]
    assert cell["seeds"] == [0, 1, 5, 6] and cell["median"] == pytest.approx(0.3)
    assert report["seeds_complete"] == [0, 1, 5, 6]
    assert suite_cache.read_text() == before  # read, never written
