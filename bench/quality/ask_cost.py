"""Cost of one suggestion at a realistic mid-study state: Ladder GP vs Optuna's GPSampler.

State: the quality benchmark's asynchronous run (``run.simulate``: 8 workers,
Ladder GP) stopped when ``--observations`` (90) evaluations are in and 7 points
are pending; late in a run observations cluster near the optimum, which is
what makes a GP ask expensive (random points would flatter it).

At that state, in one process, Ladder and Optuna asks alternate (so both see
the same machine load):

- Ladder: a new ``GPSampler`` given the observations, one untimed ask (its
  first fit starts from the prior, as a service's first refit does), then
  ``--repeats`` timed asks with the 7 pending points (hyperparameters
  warm-started from the previous fit, as in a running study). Eight
  consecutive draws include one exploitation draw (gp.py), so the median
  covers the mix a study pays.
- Optuna: a study holding the same completed trials (enqueued, then told) and
  the 7 pending ones asked and never told (RUNNING), then ``--repeats`` timed
  asks (the ask's time includes Optuna's trial bookkeeping), each failed
  afterwards so every ask sees the same state.

Writes bench/results/ask-cost-<UTC date>.json (seconds per ask: median, mean,
max; machine, versions, load average).

Run: ``nice -n 19 .venv/bin/python -m bench.quality.ask_cost``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("LADDER_TORCH_THREADS", "1")

import numpy as np  # noqa: E402
from ladder.params import PlainValue  # noqa: E402
from ladder.samplers.base import LocalDraws, Observation, SamplerContext  # noqa: E402

from bench.quality.problems import PROBLEMS, Problem  # noqa: E402
from bench.quality.run import machine_info, simulate, versions, write_report  # noqa: E402

PENDING = 7


class _Captured(Exception):
    def __init__(self, observations: list[Observation], pending: list[dict]) -> None:
        super().__init__("state captured")
        self.observations = observations
        self.pending = pending


def mid_run_state(
    problem_name: str, seed: int, observations: int
) -> tuple[list[Observation], list[dict]]:
    """Observations and pending points of a Ladder GP benchmark run at the first
    ask with at least ``observations`` results in and ``PENDING`` points running."""

    def capture(driver: Any, pending: list[dict]) -> None:
        seen = list(driver.observations)
        if len(seen) >= observations and len(pending) == PENDING:
            raise _Captured(seen, pending)

    try:
        simulate(
            problem_name, "ladder-gp", seed, observations + 2 * PENDING, PENDING + 1, True, capture
        )
    except _Captured as state:
        return state.observations, state.pending
    raise RuntimeError(f"{problem_name}: no state with {observations} observations")


def summary(seconds: Sequence[float]) -> dict[str, float]:
    return {
        "median": float(np.median(seconds)),
        "mean": float(np.mean(seconds)),
        "max": float(np.max(seconds)),
    }


def ladder_ask(
    problem: Problem, observations: list[Observation], pending: list[dict]
) -> Callable[[], None]:
    from ladder.samplers.gp import GPSampler

    sampler = GPSampler(SamplerContext(problem.space, seed=0, reserve=LocalDraws()))
    sampler.suggest(observations, 1, pending)  # first fit, from the prior

    def ask() -> None:
        sampler.suggest(observations, 1, pending)

    return ask


def optuna_ask(
    problem: Problem, observations: list[Observation], pending: list[dict]
) -> Callable[[], None]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=optuna.samplers.GPSampler(seed=0))

    def ask_at(params: Mapping[str, PlainValue]) -> optuna.trial.Trial:
        study.enqueue_trial(dict(params))
        trial = study.ask()
        problem.optuna_params(trial)
        return trial

    for observation in observations:
        study.tell(ask_at(observation.params), observation.value)
    for params in pending:
        ask_at(params)  # RUNNING: asked, never told

    def ask() -> None:
        trial = study.ask()
        problem.optuna_params(trial)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)  # next ask, same state

    return ask


def timed(ask: Callable[[], None]) -> float:
    started = time.perf_counter()
    ask()
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", default="branin,mixed,hartmann6")
    parser.add_argument("--observations", type=int, default=90)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    out = args.out or Path(f"bench/results/ask-cost-{datetime.now(UTC):%Y%m%d}.json")
    results: dict[str, Any] = {}
    for name in args.problems.split(","):
        problem = PROBLEMS[name]
        observations, pending = mid_run_state(name, args.seed, args.observations)
        asks = (
            ladder_ask(problem, observations, pending),
            optuna_ask(problem, observations, pending),
        )
        # Interleaved, so both see the same machine load.
        pairs = [(timed(asks[0]), timed(asks[1])) for _ in range(args.repeats)]
        ladder, peer = [a for a, _ in pairs], [b for _, b in pairs]
        results[name] = {
            "observations": len(observations),
            "pending": len(pending),
            "ladder_gp_seconds": summary(ladder),
            "optuna_gp_seconds": summary(peer),
            "ladder_over_optuna_median": float(np.median(ladder) / np.median(peer)),
            "ladder_gp_all": ladder,
            "optuna_gp_all": peer,
        }
        print(name, json.dumps({k: v for k, v in results[name].items() if "all" not in k}))
    from ladder.samplers import gp

    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": versions(),
        "settings": {
            "seed": args.seed,
            "repeats": args.repeats,
            "state": "Ladder GP benchmark run (8 workers) at >= observations, 7 pending",
            "gp_version": gp.VERSION,
        },
        "problems": results,
    }
    write_report(out, report)


if __name__ == "__main__":
    main()
