"""Cost of one suggestion at a realistic mid-study state: Ladder GP vs Optuna's GPSampler.

State: the quality benchmark's asynchronous run (``run.simulate``: 8 workers,
Ladder GP) stopped when ``--observations`` (90) evaluations are in and 7 points
are pending; late in a run observations cluster near the optimum, which is
what makes a GP ask expensive (random points would flatter it).

At that state, in one process, Ladder and Optuna asks alternate (so both see
the same machine load), first one suggestion per ask, then a batch of
``--batch`` suggestions (its time divided by the batch size: the cost per point):

- Ladder: a new ``GPSampler`` given the observations, one untimed ask (its
  first fit starts from the prior, as a service's first refit does), then
  ``--repeats`` timed asks with the 7 pending points (hyperparameters
  warm-started from the previous fit, as in a running study). Eight
  consecutive draws include one exploitation draw (gp.py), so the median
  covers the mix a study pays. A batch is one ``suggest`` call (one fit, a
  joint batch).
- Optuna: a study holding the same completed trials (enqueued, then told) and
  the 7 pending ones asked and never told (RUNNING), then ``--repeats`` timed
  asks (the ask's time includes Optuna's trial bookkeeping), each failed
  afterwards so every ask sees the same state. A batch is ``--batch``
  consecutive asks, each seeing the previous ones RUNNING (Optuna has no batch
  ask), all failed afterwards.

Problems: any of the broad suite's (``suite.PROBLEMS``, which holds the four of
``problems.py``).

Writes bench/results/gp-ask-cost-<UTC date>.json (seconds per ask and per
batched point: median, mean, max, Ladder / Optuna ratios of the medians;
machine, versions, seeds, load average).

Run: ``nice -n 19 .venv/bin/python -m bench.quality.ask_cost``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from ladder.params import PlainValue
from ladder.samplers.base import LocalDraws, Observation, SamplerContext

from bench.quality.problems import Problem
from bench.quality.run import machine_info, simulate, versions, write_report
from bench.quality.suite import PROBLEMS

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
            problem_name,
            "ladder-gp",
            seed,
            observations + 2 * PENDING,
            PENDING + 1,
            True,
            capture,
            problem=PROBLEMS[problem_name],
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
    problem: Problem, observations: list[Observation], pending: list[dict], count: int = 1
) -> Callable[[], None]:
    """One ``suggest`` of ``count`` points (a fit and a joint batch)."""
    from ladder.samplers.gp import GPSampler

    sampler = GPSampler(SamplerContext(problem.space, seed=0, reserve=LocalDraws()))
    sampler.suggest(observations, 1, pending)  # first fit, from the prior

    def ask() -> None:
        sampler.suggest(observations, count, pending)

    return ask


def optuna_ask(
    problem: Problem, observations: list[Observation], pending: list[dict], count: int = 1
) -> Callable[[], None]:
    """``count`` consecutive asks, each seeing the earlier ones RUNNING."""
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
        trials = []
        for _ in range(count):
            trials.append(study.ask())
            problem.optuna_params(trials[-1])
        for trial in trials:  # the next ask sees the same state
            study.tell(trial, state=optuna.trial.TrialState.FAIL)

    return ask


def timed(ask: Callable[[], None]) -> float:
    started = time.perf_counter()
    ask()
    return time.perf_counter() - started


def compare(
    ladder: Callable[[], None], optuna: Callable[[], None], repeats: int, points: int
) -> dict[str, Any]:
    """Seconds per point of ``repeats`` interleaved calls of each (so both see the
    same machine load): summaries, the ratio of the medians, every figure."""
    pairs = [(timed(ladder) / points, timed(optuna) / points) for _ in range(repeats)]
    ours, peer = [a for a, _ in pairs], [b for _, b in pairs]
    return {
        "ladder_gp_seconds": summary(ours),
        "optuna_gp_seconds": summary(peer),
        "ladder_over_optuna_median": float(np.median(ours) / np.median(peer)),
        "ladder_gp_all": ours,
        "optuna_gp_all": peer,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", default="branin,mixed,hartmann6,hartmann6_in_20d")
    parser.add_argument("--observations", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    out = args.out or Path(f"bench/results/gp-ask-cost-{datetime.now(UTC):%Y%m%d}.json")
    results: dict[str, Any] = {}
    for name in args.problems.split(","):
        problem = PROBLEMS[name]
        observations, pending = mid_run_state(name, args.seed, args.observations)
        one = compare(
            ladder_ask(problem, observations, pending),
            optuna_ask(problem, observations, pending),
            args.repeats,
            1,
        )
        batch = compare(
            ladder_ask(problem, observations, pending, args.batch),
            optuna_ask(problem, observations, pending, args.batch),
            max(1, args.repeats // 2),
            args.batch,
        )
        results[name] = {
            "observations": len(observations),
            "pending": len(pending),
            "one_suggestion": one,
            f"batch_of_{args.batch}_per_point": batch,
        }
        print(
            name,
            f"one: x{one['ladder_over_optuna_median']:.2f}",
            f"batch per point: x{batch['ladder_over_optuna_median']:.2f}",
            flush=True,
        )
    from ladder.samplers import gp

    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": versions(),
        "settings": {
            "seed": args.seed,
            "repeats": args.repeats,
            "batch": args.batch,
            "batch_repeats": max(1, args.repeats // 2),
            "state": "Ladder GP benchmark run (8 workers) at >= observations, 7 pending",
            "gp_version": gp.VERSION,
            "ratio": "Ladder / Optuna, medians of seconds per point, same process, "
            "asks interleaved",
        },
        "problems": results,
    }
    write_report(out, report)


if __name__ == "__main__":
    main()
