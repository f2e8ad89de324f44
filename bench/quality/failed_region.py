"""What failed trials buy the samplers: a study where part of the space crashes.

Branin (bench.quality.problems) where every point with x1 in the top 30 % of its
range "runs out of memory": the trial FAILED, no value (that block holds one of
Branin's three global minima, so the crash region is attractive). Each run
suggests ``--budget`` points one at a time; a point in the block becomes a
failed OUT_OF_MEMORY observation when failures are *given* (this code), and
vanishes when they are *withheld* (the samplers before failed trials reached
them). Reported per sampler and mode, over seeds: the fraction of suggestions
that crashed (wasted trials), and the median and quartiles of the final simple
regret. Results: bench/results/failed-region.json.

| flag       | default         |
|------------|-----------------|
| --budget   | 50              |
| --seeds    | 12              |
| --samplers | ladder-tpe,ladder-gp |

Run: ``nice -n 10 .venv/bin/python -m bench.quality.failed_region``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from ladder import failures
from ladder.samplers.base import LocalDraws, Observation, SamplerContext

from bench.quality.problems import PROBLEMS

RESULTS = Path(__file__).resolve().parents[1] / "results" / "failed-region.json"
BLOCK = 0.7  # unit-cube x1 above which a trial runs out of memory


def make(name: str, context: SamplerContext) -> Any:
    if name == "ladder-gp":
        from ladder.samplers.gp import GPSampler

        return GPSampler(context)
    from ladder.samplers.tpe import TPESampler

    return TPESampler(context)


def run(sampler: str, seed: int, budget: int, give_failures: bool) -> dict[str, float]:
    problem = PROBLEMS["branin"]
    s = make(sampler, SamplerContext(problem.space, seed=seed, reserve=LocalDraws()))
    observations: list[Observation] = []
    crashed, best = 0, float("inf")
    for i in range(budget):
        params = s.suggest(observations, 1)[0].params
        if problem.space.params_to_unit(params)[0] > BLOCK:
            crashed += 1
            if give_failures:
                observations.append(Observation.of_failure(str(i), params, failures.OUT_OF_MEMORY))
            continue
        value = problem.objective(params)
        best = min(best, value)
        observations.append(Observation(str(i), params, value))
    return {"crashed": crashed / budget, "regret": problem.regret(best)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--samplers", default="ladder-tpe,ladder-gp")
    args = parser.parse_args()
    report: dict[str, Any] = {"budget": args.budget, "seeds": args.seeds, "block": BLOCK}
    for sampler in args.samplers.split(","):
        for mode, give in (("given", True), ("withheld", False)):
            started = time.perf_counter()
            runs = [run(sampler, seed, args.budget, give) for seed in range(args.seeds)]
            crashed = [r["crashed"] for r in runs]
            regret = np.array([r["regret"] for r in runs])
            report[f"{sampler}/{mode}"] = {
                "crashed_fraction_mean": round(float(np.mean(crashed)), 3),
                "regret_median": float(np.median(regret)),
                "regret_quartiles": [float(q) for q in np.quantile(regret, [0.25, 0.75])],
                "seconds": round(time.perf_counter() - started, 1),
            }
            print(sampler, mode, report[f"{sampler}/{mode}"], flush=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
