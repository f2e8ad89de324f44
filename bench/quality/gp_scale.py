"""Time one GP refit + suggestion at a large study size (default 5,000 observations).

The GP fits at most ``MAX_FIT_POINTS`` observations (``fit_subset``), so the cost
of a suggestion stops growing with the study. This script measures it: Hartmann-6
observations at random points, 7 pending points, a cold sampler (first fit from
the prior) and then a warm one (the next suggestion, hyperparameters reused);
then a refit after 5 % more observations arrived, between hyperparameter fits (the
kept hyperparameters, ``gp.full_fit_due``) and, on the same data, with the
hyperparameters fitted again (warm-started L-BFGS, what every refit did before);
Optuna's GPSampler at the same point (default: 100 observations only, it fits
every observation) for scale; writes bench/results/gp-scale-<UTC date>.json.

Run: ``nice -n 10 .venv/bin/python -m bench.quality.gp_scale --observations 5000``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from ladder.samplers import gp
from ladder.samplers.base import LocalDraws, Observation, SamplerContext

from bench.quality.problems import PROBLEMS


def measure(problem_name: str, observations: int, seed: int) -> dict[str, float | int]:
    problem = PROBLEMS[problem_name]
    rng = np.random.default_rng(seed)
    dim = problem.space.dim()
    points = [problem.space.sample_to_params(rng.random(dim)) for _ in range(observations)]
    pending = [problem.space.sample_to_params(rng.random(dim)) for _ in range(7)]
    sampler = gp.GPSampler(SamplerContext(problem.space, seed=seed, reserve=LocalDraws()))
    started = time.perf_counter()
    data = [Observation(str(i), p, problem.objective(p)) for i, p in enumerate(points)]
    update_seconds = time.perf_counter() - started
    timings = []
    for _ in range(3):  # the first call fits from the prior, later ones warm-start
        started = time.perf_counter()
        sampler.suggest(data, 1, pending)
        timings.append(time.perf_counter() - started)
    arrived = [Observation(f"new{i}", p, problem.objective(p)) for i, p in enumerate(
        problem.space.sample_to_params(rng.random(dim)) for _ in range(observations // 20))]
    refits = {name: refit_seconds(problem.space, seed, data, arrived, pending, growth)
              for name, growth in (("incremental", gp.REFIT_GROWTH), ("full", 0.0))}
    return {
        "observations": observations,
        "fitted_points": min(observations, gp.MAX_FIT_POINTS),
        "refit_after_5pct_more_incremental_seconds": refits["incremental"],
        "refit_after_5pct_more_full_fit_seconds": refits["full"],
        "update_seconds": update_seconds,
        "first_suggest_seconds": timings[0],
        "warm_suggest_seconds_median": float(np.median(timings[1:])),
    }


def refit_seconds(space: object, seed: int, data: list[Observation],
                  arrived: list[Observation], pending: list, growth: float) -> float:
    """One suggestion after ``arrived`` joined ``data``, with ``gp.REFIT_GROWTH`` set to
    ``growth`` (0: the hyperparameters are fitted again at every refit)."""
    saved, gp.REFIT_GROWTH = gp.REFIT_GROWTH, growth
    try:
        sampler = gp.GPSampler(SamplerContext(space, seed=seed, reserve=LocalDraws()))
        sampler.suggest(data, 1, pending)
        started = time.perf_counter()
        sampler.suggest([*data, *arrived], 1, pending)
        return time.perf_counter() - started
    finally:
        gp.REFIT_GROWTH = saved


def measure_optuna(problem_name: str, observations: int, seed: int) -> dict[str, float | int]:
    """The same measurement for Optuna's GPSampler (no training-set cap), for scale."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    problem = PROBLEMS[problem_name]
    rng = np.random.default_rng(seed)
    dim = problem.space.dim()
    study = optuna.create_study(sampler=optuna.samplers.GPSampler(seed=seed))
    distributions = {
        p.name: optuna.distributions.FloatDistribution(p.low, p.high, log=p.log)
        for p in problem.space.params
    }
    for _ in range(observations):
        params = problem.space.sample_to_params(rng.random(dim))
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=distributions, value=problem.objective(params)
            )
        )
    for _ in range(7):  # pending: asked, not told
        trial = study.ask()
        for name, distribution in distributions.items():
            trial.suggest_float(name, distribution.low, distribution.high, log=distribution.log)
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        trial = study.ask()
        for name, distribution in distributions.items():
            trial.suggest_float(name, distribution.low, distribution.high, log=distribution.log)
        timings.append(time.perf_counter() - started)
    return {
        "observations": observations,
        "first_suggest_seconds": timings[0],
        "warm_suggest_seconds_median": float(np.median(timings[1:])),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--observations", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--problem", default="hartmann6")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optuna-observations", type=int, nargs="*", default=[100])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(f"bench/results/gp-scale-{datetime.now(UTC):%Y%m%d}.json")
    rows = [measure(args.problem, n, args.seed) for n in args.observations]
    peers = [measure_optuna(args.problem, n, args.seed) for n in args.optuna_observations]
    for row in rows + peers:
        print(json.dumps(row), flush=True)
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": int(os.environ["LADDER_TORCH_THREADS"]),
            "load_average_1m_at_end": os.getloadavg()[0],
        },
        "settings": {
            "problem": args.problem,
            "seed": args.seed,
            "pending": 7,
            "max_fit_points": gp.MAX_FIT_POINTS,
            "gp_version": gp.VERSION,
            "incremental_min": gp.INCREMENTAL_MIN,
            "refit_growth": gp.REFIT_GROWTH,
        },
        "results": rows,
        "optuna_gp": peers,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
