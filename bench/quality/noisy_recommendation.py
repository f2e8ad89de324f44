"""What a study should recommend on a noisy objective: the best observed value, or the
best posterior mean (``ladder.samplers.recommend``), on the suite's noisy problems.

Each run is the suite's Ladder GP run (``run.simulate``, the same seed, noise stream and
sampler version; its best-observed regret equals the suite cache's final regret, checked
here), then one GP fit to its 100 observations picks the configuration with the best
posterior mean. Both picks are scored on their true value. Optuna GP's runs (its
recommendation is the best observed value) come from the suite's cache, for the
Mann-Whitney p-value of each rule against it.

Output: bench/results/noisy-recommendation-<UTC date>.json, per problem and seed the
regret of both picks, how many seeds reach the optimum, medians and p-values.
Run: ``nice -n 10 .venv/bin/python -m bench.quality.noisy_recommendation --jobs 2``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ladder.samplers.recommend import best_by_posterior_mean

from bench.quality import suite_stats
from bench.quality.distinct_configs import commit
from bench.quality.run import machine_info, sampler_version, simulate, write_report
from bench.quality.suite import library_versions, load_cache, problem, run_version

NOISY = ("categorical6x5_noisy", "hartmann6_noisy")
BUDGET, WORKERS = 100, 8
SUITE_CACHE = Path("bench/results/quality-suite-runs.jsonl")


def one(task: tuple[str, int]) -> dict[str, Any]:
    name, seed = task
    noisy = problem(name)
    drivers: list[Any] = []
    run = simulate(
        name, "ladder-gp", seed, BUDGET, WORKERS,
        before_ask=lambda driver, _pending: drivers.append(driver) if not drivers else None,
        problem=noisy,
    )
    pick = best_by_posterior_mean(noisy.space, drivers[0].observations, maximize=False)
    return {
        "problem": name,
        "seed": seed,
        "best_observed": float(run["regret"][-1]),
        "posterior_mean": float(noisy.regret(noisy.objective(pick.params))),
    }


def cached_runs(
    cache: dict[tuple, dict[str, Any]], name: str, kind: str
) -> dict[int, dict[str, Any]]:
    """The suite's runs of ``kind`` on problem ``name`` as it is now, by seed."""
    wanted = (name, problem(name).version, kind, BUDGET, WORKERS, run_version(name, kind))
    return {k[3]: v for k, v in cache.items() if (*k[:3], *k[4:]) == wanted}


def summarise(rows: Sequence[dict[str, Any]], cache: dict[tuple, dict[str, Any]]) -> dict:
    out: dict[str, Any] = {}
    for name in NOISY:
        mine = sorted((r for r in rows if r["problem"] == name), key=lambda r: r["seed"])
        seeds = [r["seed"] for r in mine]
        suite = cached_runs(cache, name, "ladder-gp")
        peer = cached_runs(cache, name, "optuna-gp")
        optuna = {s: v["regret"][-1] for s, v in peer.items() if s in seeds}
        cells = {
            "best_observed": {r["seed"]: r["best_observed"] for r in mine},
            "posterior_mean": {r["seed"]: r["posterior_mean"] for r in mine},
            "optuna-gp": optuna,
        }
        out[name] = {
            "seeds": seeds,
            "per_seed": mine,
            "equals_suite_cache": all(
                s in suite and suite[s]["regret"][-1] == r["best_observed"]
                for s, r in zip(seeds, mine, strict=True)
            ),
            "optimum_reached": {k: sum(v == 0 for v in c.values()) for k, c in cells.items()},
            "quartiles": {
                k: suite_stats.quartiles(list(c.values())) for k, c in cells.items() if c
            },
            "pairwise_mann_whitney": suite_stats.pairwise({k: c for k, c in cells.items() if c}),
        }
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=SUITE_CACHE)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    tasks = [(name, seed) for name in NOISY for seed in range(args.seeds)]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(one, tasks))
    stamp = datetime.now(UTC).strftime("%Y%m%d")
    out = args.out or Path(f"bench/results/noisy-recommendation-{stamp}.json")
    write_report(out, {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": {**machine_info(), "jobs": args.jobs},
        "versions": {**library_versions(), "ladder-gp": sampler_version("ladder-gp")},
        "method": "suite harness (8 async workers, 100 evaluations); Ladder GP run per seed; "
        "recommendation = best observed value, or best posterior mean of a GP (gp.fit_model) "
        "fitted to the run's observations; both scored on the true value; Optuna GP from "
        "the suite cache (best observed)",
        "problems": summarise(rows, load_cache(args.cache)),
    })


if __name__ == "__main__":
    main()
