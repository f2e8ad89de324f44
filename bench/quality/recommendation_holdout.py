"""Ladder's noisy-metric recommendation rules on seeds the quality suite does not use.

A rule for ``ladder.samplers.recommend`` is chosen here, on held-out seeds (default
100-119) of Ladder GP's runs on the suite's nine noisy problems, and then judged by the
suite on its own seeds 0-19: choosing it on the suite's seeds would fit it to the
numbers it is judged by. Each run's observations are kept (``--histories``, gzipped
JSON lines, reused when present), so every rule is scored on the same 100 evaluations:

- ``best observed``: the lowest observed value (Optuna's ``best_trial``);
- ``posterior mean``: the best GP posterior mean at an evaluated point (the rule of
  ``recommend.VERSION`` 1);
- ``calibrated``: ``recommend.best_by_posterior_mean`` as it is now (VERSION 2: the
  leave-one-out variances calibrated on the study's points).

Per problem and rule: median, quartiles and seeds at the optimum of the regret of the
true value of the pick, and Mann-Whitney p-values between the rules
(``suite_stats.pairwise``).

Output: bench/results/recommendation-holdout-<UTC date>.json (``--out``).
Run: ``nice .venv/bin/python -m bench.quality.recommendation_holdout --jobs 2``
(about 3 minutes a problem with two jobs on the 2-core host; nothing when the
histories are there).
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.quality import run as harness
from bench.quality import suite_stats
from bench.quality.distinct_configs import commit
from bench.quality.run import machine_info, write_report
from bench.quality.suite import PROBLEM_NAMES, library_versions, problem

BUDGET, WORKERS = 100, 8
HISTORIES = Path("bench/results/recommendation-holdout-histories.jsonl.gz")


class RecordingDriver(harness.LadderDriver):
    """Ladder's driver that keeps what it was told for the rules scored here."""

    kept: list[list] = []  # [params, value], as JSON holds them

    def recommend(self) -> Mapping[str, Any]:
        RecordingDriver.kept = [[dict(o.params), o.value] for o in self.observations]
        return super().recommend()


def history(task: tuple[str, int]) -> dict[str, Any]:
    """One Ladder GP run of the suite's harness, with its observations."""
    name, seed = task
    original = harness.LadderDriver
    harness.LadderDriver = RecordingDriver  # type: ignore[misc]
    try:
        harness.simulate(name, "ladder-gp", seed, BUDGET, WORKERS, problem=problem(name))
    finally:
        harness.LadderDriver = original  # type: ignore[misc]
    return {"problem": name, "seed": seed, "observations": RecordingDriver.kept}


def load_histories(path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    if not path.exists():
        return {}
    with gzip.open(path, "rt") as f:
        runs = [json.loads(line) for line in f if line.strip()]
    return {(r["problem"], r["seed"]): r for r in runs}


def collect(path: Path, names: Sequence[str], seeds: Sequence[int], jobs: int) -> list[dict]:
    """The histories of every (problem, seed), running the missing ones."""
    have = load_histories(path)
    missing = [(n, s) for n in names for s in seeds if (n, s) not in have]
    if missing:
        with ProcessPoolExecutor(jobs) as pool, gzip.open(path, "at") as f:
            for run in pool.map(history, missing):
                f.write(json.dumps(run) + "\n")
                have[(run["problem"], run["seed"])] = run
    return [have[(n, s)] for n in names for s in seeds]


def posterior_mean_pick(name: str, observations: Sequence[Any]) -> int:
    """The rule of recommend VERSION 1: the best plain posterior mean (minimised metric)."""
    import torch
    from ladder.samplers import gp

    space = problem(name).space
    x = torch.tensor(np.stack([space.params_to_unit(o.params, gp.ENCODING) for o in observations]))
    y = torch.tensor([[-o.value] for o in observations], dtype=torch.float64)
    model = gp.fit_model(x, y)  # outside no_grad: the fit follows gradients
    with torch.no_grad():
        mean = model.posterior(x).mean.squeeze(-1)
    return int(torch.argmax(mean))


def picks(run: Mapping[str, Any]) -> dict[str, float]:
    """Rule -> the regret of the true value of its pick in ``run``."""
    from ladder.samplers.base import Observation
    from ladder.samplers.recommend import best_by_posterior_mean

    suite_problem = problem(run["problem"])
    observations = [
        Observation(str(i), params, value) for i, (params, value) in enumerate(run["observations"])
    ]
    calibrated = best_by_posterior_mean(suite_problem.space, observations, maximize=False)
    chosen = {
        "best observed": min(range(len(observations)), key=lambda i: observations[i].value),
        "posterior mean": posterior_mean_pick(run["problem"], observations),
        "calibrated": int(calibrated.trial_id),
    }
    return {
        rule: suite_problem.regret(suite_problem.objective(observations[i].params))
        for rule, i in chosen.items()
    }


def summarise(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    cells: dict[str, dict[str, dict[int, float]]] = {}
    for run in runs:
        for rule, regret in picks(run).items():
            cells.setdefault(run["problem"], {}).setdefault(rule, {})[run["seed"]] = regret
    return {
        name: {
            "quartiles": {rule: suite_stats.quartiles(list(c.values())) for rule, c in by.items()},
            "optimum_reached": {rule: sum(v == 0 for v in c.values()) for rule, c in by.items()},
            "pairwise_mann_whitney": suite_stats.pairwise(by),
        }
        for name, by in cells.items()
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--first-seed", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--histories", type=Path, default=HISTORIES)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    names = [n for n in PROBLEM_NAMES if problem(n).noisy]
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    runs = collect(args.histories, names, seeds, args.jobs)
    stamp = datetime.now(UTC)
    out = args.out or Path(f"bench/results/recommendation-holdout-{stamp:%Y%m%d}.json")
    write_report(
        out.with_suffix(".json"),
        {
            "created": stamp.isoformat(),
            "commit": commit(),
            "machine": machine_info(),
            "versions": library_versions(),
            "sampler": "ladder-gp",
            "budget": BUDGET,
            "workers": WORKERS,
            "seeds": seeds,
            "histories": str(args.histories),
            "problems": summarise(runs),
        },
    )


if __name__ == "__main__":
    main()
