"""Distinct configurations per 100 evaluations on finite spaces (issue 18, "No wasted
evaluations").

Each Ladder sampler (TPE, GP, AUTO and the quasi-random RANDOM) runs the quality
benchmark's asynchronous schedule: ``--workers`` (8) evaluations in flight, each taking an
exponential time (mean 1, one duration stream per seed as in ``run.simulate``); a worker
that finishes reports, then asks with the 7 others pending. ``--budget`` (100)
suggestions per run, on finite spaces whose optimum is known by enumeration:

| problem        | configurations | parameters                                          |
|----------------|----------------|-----------------------------------------------------|
| categorical6x5 | 15,625         | 6 categoricals of 5 choices (additive + pair terms)  |
| ints           | 4,096          | 4 ints in [0, 7] (a tilted bowl)                     |
| ordinal        | 1,944          | 4 ordinal grids (lr, batch, layers, dropout)         |
| mixed          | 480            | 2 categoricals, an int, an ordinal                   |
| categorical3x3 | 27             | 3 categoricals of 3 choices (exhausted before 100)   |

Per run: how many distinct configurations the suggestions hold, how many suggestions
repeat one evaluated or in flight at that moment, and the simple regret after the
budget. AUTO's run is its delegate's run relabelled, as in ``run.py`` (same seed, same
draws). ``--before PATH`` quotes an earlier report of this script (e.g. from the commit
before the rule) next to the new figures.

Writes bench/results/distinct-configs-<UTC date>.json (machine, versions, seeds; each
cell lists its seeds). ``--gp-seeds`` runs the GP on fewer seeds: its asks cost about a
second each on these spaces.
Run: ``nice -n 10 .venv/bin/python -m bench.quality.distinct_configs --gp-seeds 2``.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import subprocess
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from ladder.params import PlainValue
from ladder.samplers.base import Observation, Sampler, SamplerContext
from ladder.space import Kind, ParamSpec, Space

from bench.quality.problems import Problem
from bench.quality.run import auto_delegate, machine_info, versions, write_report

SAMPLERS = ["ladder-tpe", "ladder-gp", "ladder-auto", "ladder-random"]


def _categorical(name: str, n: int) -> ParamSpec:
    return ParamSpec(name, Kind.CATEGORICAL, values=tuple(f"c{i}" for i in range(n)))


def _configurations(space: Space) -> list[dict[str, PlainValue]]:
    """Every configuration of a space without floats or conditions."""
    domains = [
        list(range(int(p.low), int(p.high) + 1)) if p.kind is Kind.INT else list(p.values)
        for p in space.params
    ]
    return [dict(zip(space.names, combo, strict=True)) for combo in itertools.product(*domains)]


def _finite(
    name: str, space: Space, objective: Callable[[Mapping[str, PlainValue]], float]
) -> Problem:
    optimum = min(objective(c) for c in _configurations(space))
    return Problem(name, space, objective, optimum)


def _tables(n_params: int, n_choices: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n_params, n_choices)), rng.random((n_params, n_choices, n_choices))


_CAT6 = _tables(6, 5, 18)
_CAT3 = _tables(3, 3, 27)


def _additive_with_pairs(tables: tuple[np.ndarray, np.ndarray]) -> Callable[..., float]:
    """Per-choice costs plus a weaker interaction of each parameter with the next."""
    main, pairs = tables

    def objective(params: Mapping[str, PlainValue]) -> float:
        choice = [int(str(params[f"p{j}"])[1:]) for j in range(len(main))]
        value = sum(main[j, c] for j, c in enumerate(choice))
        value += 0.4 * sum(pairs[j, choice[j], choice[j + 1]] for j in range(len(main) - 1))
        return float(value)

    return objective


def _ints(params: Mapping[str, PlainValue]) -> float:
    x = np.array([int(params[f"n{i}"]) for i in range(4)], dtype=float)
    target = np.array([5.0, 2.0, 6.0, 1.0])
    return float(np.sum((x - target) ** 2 * [1.0, 0.5, 0.25, 2.0]) + 0.3 * (x[0] - x[1]) ** 2)


def _ordinal(params: Mapping[str, PlainValue]) -> float:
    lr = math.log10(float(params["lr"]))
    batch = math.log2(float(params["batch"]))
    return (
        (lr + 3 + 0.1 * (batch - 6)) ** 2
        + 0.2 * (batch - 7) ** 2
        + 0.1 * (int(params["layers"]) - 4) ** 2
        + 3 * (float(params["dropout"]) - 0.2) ** 2
    )


def _mixed(params: Mapping[str, PlainValue]) -> float:
    offset = {"adam": 0.0, "sgd": 0.4, "rms": 0.2}[str(params["optimizer"])]
    act = {"relu": 0.1, "gelu": 0.0, "tanh": 0.5, "elu": 0.15}[str(params["act"])]
    width = math.log2(int(params["width"]))
    return offset + act + 0.1 * (int(params["layers"]) - 5) ** 2 + 0.3 * (width - 6) ** 2


PROBLEMS: dict[str, Problem] = {
    "categorical6x5": _finite(
        "categorical6x5",
        Space([_categorical(f"p{j}", 5) for j in range(6)]),
        _additive_with_pairs(_CAT6),
    ),
    "ints": _finite(
        "ints", Space([ParamSpec(f"n{i}", Kind.INT, low=0, high=7) for i in range(4)]), _ints
    ),
    "ordinal": _finite(
        "ordinal",
        Space(
            [
                ParamSpec("lr", Kind.ORDINAL, values=(1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)),
                ParamSpec("batch", Kind.ORDINAL, values=(16, 32, 64, 128, 256, 512)),
                ParamSpec("layers", Kind.ORDINAL, values=(1, 2, 3, 4, 6, 8)),
                ParamSpec("dropout", Kind.ORDINAL, values=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5)),
            ]
        ),
        _ordinal,
    ),
    "mixed": _finite(
        "mixed",
        Space(
            [
                ParamSpec("optimizer", Kind.CATEGORICAL, values=("adam", "sgd", "rms")),
                ParamSpec("layers", Kind.INT, low=1, high=8),
                ParamSpec("width", Kind.ORDINAL, values=(16, 32, 64, 128, 256)),
                ParamSpec("act", Kind.CATEGORICAL, values=("relu", "gelu", "tanh", "elu")),
            ]
        ),
        _mixed,
    ),
    "categorical3x3": _finite(
        "categorical3x3",
        Space([_categorical(f"p{j}", 3) for j in range(3)]),
        _additive_with_pairs(_CAT3),
    ),
}


def make_sampler(kind: str, space: Space, seed: int) -> Sampler:
    from ladder.samplers.auto import AutoSampler
    from ladder.samplers.gp import GPSampler
    from ladder.samplers.quasirandom import QuasiRandomSampler
    from ladder.samplers.tpe import TPESampler

    factory = {
        "ladder-tpe": TPESampler,
        "ladder-gp": GPSampler,
        "ladder-auto": AutoSampler,
        "ladder-random": QuasiRandomSampler,
    }
    return factory[kind](SamplerContext(space=space, seed=seed))


def config(params: Mapping[str, PlainValue]) -> str:
    return json.dumps(params, sort_keys=True)


def run(problem_name: str, kind: str, seed: int, budget: int, workers: int) -> dict[str, Any]:
    """One asynchronous run (the schedule of ``run.simulate``), counting repeats."""
    warnings.simplefilter("ignore")
    problem = PROBLEMS[problem_name]
    sampler = make_sampler(kind, problem.space, seed)
    durations = np.random.default_rng([seed, 1]).exponential(1.0, size=budget)
    observations: list[Observation] = []
    running: list[tuple[float, int, dict]] = []  # (finish time, order, params)
    evaluated: set[str] = set()
    suggested: list[str] = []
    repeats = {"evaluated": 0, "in_flight": 0}
    ask_seconds: list[float] = []
    cpu = time.process_time()
    now = 0.0
    while len(suggested) < budget or running:
        if len(suggested) < budget and len(running) < workers:
            pending = [params for _, _, params in running]
            started = time.perf_counter()
            params = sampler.suggest(observations, 1, pending)[0].params
            ask_seconds.append(time.perf_counter() - started)
            key = config(params)
            repeats["evaluated"] += key in evaluated
            repeats["in_flight"] += key in {config(p) for p in pending}
            heapq.heappush(running, (now + durations[len(suggested)], len(suggested), params))
            suggested.append(key)
            continue
        now, order, params = heapq.heappop(running)
        observations.append(Observation(str(order), params, problem.objective(params)))
        evaluated.add(config(params))
    size = len(_configurations(problem.space))
    first_repeat = next((i for i, key in enumerate(suggested) if key in suggested[:i]), None)
    best = min(o.value for o in observations)
    return {
        "problem": problem_name,
        "sampler": kind,
        "seed": seed,
        "distinct": len(set(suggested)),
        "distinct_of_first_size": len(set(suggested[:size])),
        "first_repeat": first_repeat,
        "repeats_of_evaluated": repeats["evaluated"],
        "repeats_of_in_flight": repeats["in_flight"],
        "final_regret": problem.regret(best),
        "ask_seconds_median": float(np.median(ask_seconds)),
        "cpu_seconds": time.process_time() - cpu,
    }


def _task(args: tuple) -> dict[str, Any]:
    return run(*args)


def delegate_of(problem_name: str) -> str:
    """The sampler AUTO delegates to on a problem (its run is that sampler's run)."""
    return auto_delegate(PROBLEMS[problem_name].space)


def summarize(runs: Sequence[Mapping[str, Any]], budget: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, problem in PROBLEMS.items():
        cells = {}
        for kind in dict.fromkeys(r["sampler"] for r in runs if r["problem"] == name):
            chosen = sorted(
                (r for r in runs if r["problem"] == name and r["sampler"] == kind),
                key=lambda r: r["seed"],
            )
            distinct = [r["distinct"] for r in chosen]
            regret = [r["final_regret"] for r in chosen]
            cells[kind] = {
                "seeds": [r["seed"] for r in chosen],
                "distinct": distinct,
                "distinct_median": float(np.median(distinct)),
                "distinct_min": int(min(distinct)),
                "distinct_of_first_size": [r["distinct_of_first_size"] for r in chosen],
                "first_repeat": [r["first_repeat"] for r in chosen],
                "repeats_of_evaluated": [r["repeats_of_evaluated"] for r in chosen],
                "repeats_of_in_flight": [r["repeats_of_in_flight"] for r in chosen],
                "final_regret": regret,
                "final_regret_median": float(np.median(regret)),
                "ask_seconds_median": float(np.median([r["ask_seconds_median"] for r in chosen])),
                **({"delegate": chosen[0]["delegate"]} if "delegate" in chosen[0] else {}),
            }
        if cells:
            out[name] = {
                "configurations": len(_configurations(problem.space)),
                "optimum": problem.optimum,
                "most_distinct_possible": min(budget, len(_configurations(problem.space))),
                "samplers": cells,
            }
    return out


def compare(earlier: Sequence[Mapping[str, Any]], now: Mapping[str, Any]) -> dict[str, Any]:
    """Per problem and sampler: distinct configurations and final regret (medians over
    the seeds both runs have) before and now."""
    out: dict[str, Any] = {}
    for report in earlier:
        for problem, entry in report["problems"].items():
            for kind, before in entry["samplers"].items():
                after = now.get(problem, {}).get("samplers", {}).get(kind)
                if after is None:
                    continue
                common = sorted(set(before["seeds"]) & set(after["seeds"]))

                def pick(cell: Mapping[str, Any], field: str, seeds: list[int] = common) -> list:
                    return [
                        v for s, v in zip(cell["seeds"], cell[field], strict=True) if s in seeds
                    ]

                out.setdefault(problem, {})[kind] = {
                    "seeds": common,
                    "distinct_median": [
                        float(np.median(pick(before, "distinct"))),
                        float(np.median(pick(after, "distinct"))),
                    ],
                    "final_regret_median": [
                        float(np.median(pick(before, "final_regret"))),
                        float(np.median(pick(after, "final_regret"))),
                    ],
                }
    return out


def commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--gp-seeds", type=int, default=None, help="fewer seeds for the GP (about 1 s per ask)"
    )
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--before", type=Path, nargs="*", default=[], help="earlier reports to quote"
    )
    parser.add_argument("--label", default="", help="what the code under test is")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    problems, samplers = args.problems.split(","), args.samplers.split(",")
    seeds = list(range(args.seeds))
    gp_seeds = seeds[: args.gp_seeds] if args.gp_seeds is not None else seeds
    tasks = [
        (problem, kind, seed, args.budget, args.workers)
        for seed in seeds
        for problem in problems
        for kind in samplers
        if kind != "ladder-auto" and (kind != "ladder-gp" or seed in gp_seeds)
    ]
    started = time.time()
    runs: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for result in pool.map(_task, tasks):
            runs.append(result)
            print(
                f"{time.time() - started:6.0f}s {result['problem']:15s} {result['sampler']:14s} "
                f"seed {result['seed']} distinct {result['distinct']:3d} "
                f"regret {result['final_regret']:.4g}",
                flush=True,
            )
    if "ladder-auto" in samplers:
        runs += [
            {**r, "sampler": "ladder-auto", "delegate": r["sampler"]}
            for r in list(runs)
            if r["sampler"] == delegate_of(r["problem"])
        ]
    report: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "label": args.label,
        "machine": {**machine_info(), "jobs": args.jobs},
        "versions": versions(),
        "settings": {
            "seeds": seeds,
            "gp_seeds": gp_seeds,
            "budget": args.budget,
            "workers": args.workers,
            "durations": "exponential, mean 1, per seed (as bench.quality.run)",
            "asks": "one point per ask, the other workers' points pending",
            "ladder_auto": "relabelled run of the sampler AUTO picks (identical draws)",
            "cpu_seconds": round(sum(r["cpu_seconds"] for r in runs), 1),
        },
        "problems": summarize(runs, args.budget),
    }
    if args.before:
        earlier = [json.loads(path.read_text()) for path in args.before]
        report["before"] = [
            {key: e.get(key) for key in ("label", "commit", "created", "settings", "problems")}
            for e in earlier
        ]
        report["before_and_after"] = compare(earlier, report["problems"])
    out = args.out or Path(f"bench/results/distinct-configs-{datetime.now(UTC):%Y%m%d}.json")
    write_report(out, report)


if __name__ == "__main__":
    main()
