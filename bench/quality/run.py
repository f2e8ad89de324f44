"""Sample-efficiency benchmark: Ladder's samplers vs Optuna 5 vs random search,
driven the same asynchronous, parallel way a real study runs.

Simulation. ``--workers`` workers (8) evaluate in parallel; each evaluation
takes an exponential random duration (mean 1, one duration stream per seed,
identical for every sampler). A worker that becomes free reports its result,
then asks for a new point while the other workers' points are still pending:
Ladder samplers get them as ``pending``, Optuna's trials stay RUNNING (asked,
not told). ``--budget`` (100) points are suggested per run.

Output: per (problem, sampler) the median and quartiles over seeds of the
simple regret (best value so far minus the optimum) after each completed
evaluation; the evaluations each sampler needs for its median curve to reach
random search's median regret at 500 evaluations; suggest time per call; and,
for Ladder GP and TPE on Hartmann-6, the minimal unit-cube distance between a
new suggestion and the points pending at that moment, with pending handling on
and off. Results go to bench/results/quality-<stamp>.json and .png.

| flag         | default                                    |
|--------------|--------------------------------------------|
| --seeds      | 20                                         |
| --budget     | 100                                        |
| --workers    | 8                                          |
| --problems   | branin,hartmann6,mixed,conditional         |
| --samplers   | ladder-gp,ladder-tpe,ladder-auto,optuna-tpe,optuna-gp,random |
| --jobs       | 2 (processes of one thread, `__init__.py`) |
| --cache      | bench/results/quality-runs.jsonl (finished runs are reused) |
| --out        | bench/results/quality-<UTC date>           |
| --report-only| summarise the cached runs only             |

Cache key: (problem, sampler, seed, budget, workers, pending, sampler version);
``VERSION`` in gp.py / tpe.py, the Optuna version for peers.

Run: ``nice -n 10 .venv/bin/python -m bench.quality.run --seeds 20``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from ladder.params import PlainValue
from ladder.samplers.base import Observation, SamplerContext
from ladder.samplers.distinct import config_key
from ladder.space import Space

from bench.quality import ONE_THREAD
from bench.quality.problems import PROBLEMS, Problem

SAMPLERS = ["ladder-gp", "ladder-tpe", "ladder-auto", "optuna-tpe", "optuna-gp", "random"]
RANDOM_REFERENCE_EVALS = 500
# Seeds are run in blocks of this many: every cell of a block before the next.
SEED_BLOCK = 10
# Pending-handling on/off is measured on this problem for these samplers.
SPREAD_PROBLEM = "hartmann6"
SPREAD_SAMPLERS = ["ladder-gp", "ladder-tpe"]


class LadderDriver:
    def __init__(self, kind: str, problem: Problem, seed: int, use_pending: bool) -> None:
        from ladder.samplers.auto import AutoSampler
        from ladder.samplers.gp import GPSampler
        from ladder.samplers.tpe import TPESampler

        factory = {"ladder-gp": GPSampler, "ladder-tpe": TPESampler, "ladder-auto": AutoSampler}
        self.sampler = factory[kind](SamplerContext(space=problem.space, seed=seed))
        self.space = problem.space
        self.use_pending = use_pending
        self.count = 0
        self.observations: list[Observation] = []

    def ask(self, pending: Sequence[Mapping[str, PlainValue]]) -> tuple[object, dict]:
        given = pending if self.use_pending else ()
        proposal = self.sampler.suggest(self.observations, 1, given)[0]
        self.count += 1
        return str(self.count), proposal.params

    def tell(self, key: object, params: Mapping[str, PlainValue], value: float) -> None:
        self.observations.append(Observation(str(key), params, value))

    @staticmethod
    def recommendation_version() -> int:
        from ladder.samplers import recommend

        return recommend.VERSION

    def recommend(self) -> Mapping[str, PlainValue]:
        """What a Ladder study recommends on a noisy metric (``LadderClient.recommended``,
        ``ladder best --noisy``): the best posterior mean among the evaluated points."""
        from ladder.samplers.recommend import best_by_posterior_mean

        return best_by_posterior_mean(self.space, self.observations, maximize=False).params


class OptunaDriver:
    def __init__(self, kind: str, problem: Problem, seed: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        if kind == "optuna-tpe":
            sampler = optuna.samplers.TPESampler(multivariate=True, seed=seed)
        else:
            sampler = optuna.samplers.GPSampler(seed=seed)
        self.study = optuna.create_study(sampler=sampler)
        self.problem = problem

    def ask(self, pending: Sequence[Mapping[str, PlainValue]]) -> tuple[object, dict]:
        trial = self.study.ask()
        return trial, self.problem.optuna_params(trial)

    def tell(self, key: object, params: Mapping[str, PlainValue], value: float) -> None:
        self.study.tell(key, value)


class RandomDriver:
    def __init__(self, problem: Problem, seed: int) -> None:
        self.space = problem.space
        self.rng = np.random.default_rng([seed, 7])

    def ask(self, pending: Sequence[Mapping[str, PlainValue]]) -> tuple[object, dict]:
        return None, self.space.sample_to_params(self.rng.random(self.space.dim()))

    def tell(self, key: object, params: Mapping[str, PlainValue], value: float) -> None:
        pass


def driver_class(kind: str) -> type:
    if kind.startswith("ladder-"):
        return LadderDriver
    if kind.startswith("optuna-"):
        return OptunaDriver
    if kind == "ax-bo":  # a peer of the broad suite (bench/quality/suite.py)
        from bench.quality.suite_peers import AxDriver

        return AxDriver
    return RandomDriver


def make_driver(kind: str, problem: Problem, seed: int, use_pending: bool) -> Any:
    cls = driver_class(kind)
    if cls is LadderDriver:
        return LadderDriver(kind, problem, seed, use_pending)
    if cls is OptunaDriver:
        return OptunaDriver(kind, problem, seed)
    return cls(problem, seed)


def has_own_recommendation(kind: str) -> bool:
    """Whether ``kind``'s study recommends its own way on a noisy metric (its driver has
    ``recommend()``) rather than by the best observed value."""
    return hasattr(driver_class(kind), "recommend")


def recommendation_version(kind: str) -> int:
    """The version of ``kind``'s own recommendation rule (its driver's
    ``recommendation_version()``, bumped when the rule changes)."""
    return driver_class(kind).recommendation_version()


def simulate(
    problem_name: str,
    kind: str,
    seed: int,
    budget: int,
    workers: int,
    use_pending: bool = True,
    before_ask: Callable[[Any, list[dict]], None] | None = None,
    problem: Problem | None = None,
) -> dict[str, Any]:
    """One asynchronous run; regret after each completed evaluation (completion order),
    and how many distinct configurations the suggestions hold (``distinct``).
    ``before_ask(driver, pending)`` is called before every ask (ask_cost.py uses it
    to capture a mid-run state). ``problem`` replaces ``PROBLEMS[problem_name]`` (the
    broad suite's problems). A problem with ``noisy = True`` reports
    ``observe(params, rng)`` to the sampler (one noise stream per seed) while
    ``objective`` is its true value: the regret curve is then the true value of the
    best observed configuration, and ``recommended_regret`` the true value of the one
    the study recommends at the end: the driver's ``recommend()`` where the tool has a
    noise-aware recommendation (Ladder's posterior mean, Ax's model-based best), else
    the best observed one (Optuna's ``best_trial``, random search)."""
    warnings.simplefilter("ignore")
    problem = problem if problem is not None else PROBLEMS[problem_name]
    noisy = bool(getattr(problem, "noisy", False))
    noise = np.random.default_rng([seed, 2])
    driver = make_driver(kind, problem, seed, use_pending)
    durations = np.random.default_rng([seed, 1]).exponential(1.0, size=budget)
    running: list[tuple[float, int, object, dict]] = []  # (finish time, order, key, params)
    regrets: list[float] = []
    spreads: list[tuple[int, float]] = []
    ask_seconds: list[tuple[int, float]] = []
    best = math.inf
    recommended: Mapping[str, PlainValue] = {}
    suggested_configs: set[tuple] = set()
    suggested, now = 0, 0.0

    def launch() -> None:
        nonlocal suggested
        pending = [params for _, _, _, params in running]
        if before_ask is not None:
            before_ask(driver, pending)
        started = time.perf_counter()
        key, params = driver.ask(pending)
        ask_seconds.append((len(regrets), time.perf_counter() - started))
        suggested_configs.add(config_key(problem.space, params))
        if pending:
            point = problem.space.params_to_unit(params)
            others = np.stack([problem.space.params_to_unit(p) for p in pending])
            spreads.append((len(regrets), float(np.min(np.linalg.norm(others - point, axis=1)))))
        heapq.heappush(running, (now + durations[suggested], suggested, key, params))
        suggested += 1

    while suggested < min(workers, budget):
        launch()
    while running:
        now, _, key, params = heapq.heappop(running)
        value = problem.observe(params, noise) if noisy else problem.objective(params)  # type: ignore[attr-defined]
        driver.tell(key, params, value)
        if value < best:
            best, recommended = value, params
        regrets.append(problem.regret(problem.objective(recommended) if noisy else best))
        if suggested < budget:
            launch()
    run: dict[str, Any] = {
        "problem": problem_name,
        "sampler": kind,
        "seed": seed,
        "budget": budget,
        "workers": workers,
        "pending": use_pending,
        "regret": regrets,
        "spread": spreads,
        "ask_seconds": ask_seconds,
        "distinct": len(suggested_configs),
    }
    if noisy:
        own = getattr(driver, "recommend", None)
        final = own() if own is not None else recommended
        run["recommended_regret"] = problem.regret(problem.objective(final))
        run["recommendation"] = "model" if own is not None else "best-observed"
    return run


def sampler_version(kind: str) -> str:
    """Part of the cache key: a run is recomputed when its sampler's code changed
    (Ladder samplers bump ``VERSION``; peers are keyed by the Optuna version)."""
    if kind in ("ladder-gp", "ladder-auto"):
        from ladder.samplers import gp

        return f"gp-{gp.VERSION}"
    if kind == "ladder-tpe":
        from ladder.samplers import tpe

        return f"tpe-{tpe.VERSION}"
    if kind.startswith("optuna-"):
        import optuna

        return f"optuna-{optuna.__version__}"
    if kind == "ax-bo":
        from bench.quality.suite_peers import ax_version

        return ax_version()
    return "random-1"


def _task(args: tuple) -> dict[str, Any]:
    run = simulate(*args)
    run["version"] = sampler_version(run["sampler"])
    return run


def _key(run: Mapping[str, Any]) -> tuple:
    return (
        run["problem"],
        run["sampler"],
        run["seed"],
        run["budget"],
        run["workers"],
        run["pending"],
        run["version"],
    )


def _cached_version(run: Mapping[str, Any]) -> str:
    """Runs cached before versions were recorded: peers (unchanged code since)
    get today's version, Ladder runs a version no current sampler has."""
    if "version" in run:
        return str(run["version"])
    if run["sampler"].startswith("ladder-"):
        return "unversioned"
    return sampler_version(run["sampler"])


def auto_delegate(space: Space) -> str:
    """The sampler AUTO delegates to on ``space`` (``ladder.samplers.auto``'s rule), by
    its benchmark name; below MAX_GP_OBSERVATIONS AUTO's run is that sampler's run."""
    from ladder.samplers.auto import prefers_gp

    return "ladder-gp" if prefers_gp(space) else "ladder-tpe"


def auto_runs(
    runs: list[dict[str, Any]], problems: Mapping[str, Problem] = PROBLEMS
) -> list[dict[str, Any]]:
    """AUTO delegates to GP or TPE with the same seed and draw stream, so its run is
    exactly the delegate's run (the budget here stays below MAX_GP_OBSERVATIONS);
    relabel instead of recomputing it."""
    out = []
    for run in runs:
        delegate = auto_delegate(problems[run["problem"]].space)
        if run["sampler"] == delegate and run["pending"]:
            out.append({**run, "sampler": "ladder-auto", "delegate": delegate})
    return out


def is_secondary(problem_name: str, kind: str, problems: Mapping[str, Problem] = PROBLEMS) -> bool:
    """GP on a space where AUTO picks TPE: a reference row, not Ladder's best mode."""
    return kind == "ladder-gp" and auto_delegate(problems[problem_name].space) != kind


def random_reference(problem_name: str, seeds: Sequence[int]) -> float:
    """Median over seeds of random search's regret after 500 evaluations."""
    problem = PROBLEMS[problem_name]
    finals = []
    for seed in seeds:
        rng = np.random.default_rng([seed, 7])
        values = [
            problem.objective(problem.space.sample_to_params(rng.random(problem.space.dim())))
            for _ in range(RANDOM_REFERENCE_EVALS)
        ]
        finals.append(problem.regret(min(values)))
    return float(np.median(finals))


def summarize(runs: list[dict[str, Any]], seeds: Sequence[int], problems: Sequence[str]) -> dict:
    out: dict[str, Any] = {}
    for problem in problems:
        reference = random_reference(problem, seeds)
        entry: dict[str, Any] = {"random_median_regret_at_500": reference, "samplers": {}}
        for kind in sorted({r["sampler"] for r in runs if r["problem"] == problem}):
            for pending in (True, False):
                chosen = [
                    r
                    for r in runs
                    if r["problem"] == problem and r["sampler"] == kind and r["pending"] == pending
                ]
                if not chosen:
                    continue
                curves = np.array([r["regret"] for r in chosen])
                q1, median, q3 = np.percentile(curves, [25, 50, 75], axis=0)
                reached = np.nonzero(median <= reference)[0]
                late = [s for r in chosen for n, s in r["ask_seconds"] if n >= 90]
                spreads = [d for r in chosen for n, d in r["spread"] if n >= 16]
                name = kind if pending else f"{kind} (pending ignored)"
                entry["samplers"][name] = {
                    "seeds": sorted(r["seed"] for r in chosen),
                    "median_regret": median.tolist(),
                    "q1_regret": q1.tolist(),
                    "q3_regret": q3.tolist(),
                    "final_median_regret": float(median[-1]),
                    "final_q1_regret": float(q1[-1]),
                    "final_q3_regret": float(q3[-1]),
                    "evals_to_random_500": int(reached[0]) + 1 if reached.size else None,
                    "suggest_seconds_at_90plus_obs_median": float(np.median(late))
                    if late
                    else None,
                    "min_pending_distance_median": float(np.median(spreads)) if spreads else None,
                    "min_pending_distance_p10": float(np.percentile(spreads, 10))
                    if spreads
                    else None,
                    "min_pending_distance_min": float(np.min(spreads)) if spreads else None,
                }
        out[problem] = entry
    return out


def plot(summary: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(summary) + 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), squeeze=False)
    for ax, (problem, entry) in zip(axes[0], summary.items(), strict=False):
        for name, stats in entry["samplers"].items():
            if "ignored" in name:
                continue
            x = np.arange(1, len(stats["median_regret"]) + 1)
            floor = 1e-6  # log axis; a regret of exactly 0 is drawn at the floor
            style = "--" if name == "ladder-auto" else "-"  # AUTO overlaps its delegate
            (line,) = ax.plot(x, np.maximum(stats["median_regret"], floor), style, label=name)
            ax.fill_between(
                x,
                np.maximum(stats["q1_regret"], floor),
                np.maximum(stats["q3_regret"], floor),
                alpha=0.15,
                color=line.get_color(),
            )
        ax.axhline(entry["random_median_regret_at_500"], color="k", ls=":", label="random @500")
        ax.set_yscale("log")
        ax.set_title(problem)
        ax.set_xlabel("evaluations")
        ax.set_ylabel("simple regret (median, IQR)")
    axes[0][0].legend(fontsize=7)
    plot_spread(axes[0][-1], summary.get(SPREAD_PROBLEM, {}).get("samplers", {}))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_spread(ax: Any, samplers: Mapping[str, Any]) -> None:
    """Minimal distance from a new suggestion to the pending points, pending
    handling on vs off (bars: median, 10th percentile, minimum over suggestions)."""
    names = [n for n in samplers if samplers[n].get("min_pending_distance_median") is not None]
    names = sorted(n for n in names if any(n.startswith(s) for s in SPREAD_SAMPLERS))
    stats = ["min_pending_distance_median", "min_pending_distance_p10", "min_pending_distance_min"]
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        heights = [samplers[name][stat] or 0.0 for stat in stats]
        ax.bar(np.arange(len(stats)) + i * width, heights, width, label=name)
    ax.set_xticks(np.arange(len(stats)) + width * (len(names) - 1) / 2, ["median", "p10", "min"])
    ax.set_title(f"{SPREAD_PROBLEM}: distance to pending points")
    ax.set_ylabel("unit-cube distance (suggestions after 16 evals)")
    ax.legend(fontsize=7)


def machine_info() -> dict[str, Any]:
    """Where a benchmark ran: platform, cores, threads per process, 1-minute load average."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": int(os.environ["LADDER_TORCH_THREADS"]),
        "threads": {name: os.environ[name] for name in ONE_THREAD},
        "load_average_1m_at_end": os.getloadavg()[0],
    }


def write_report(path: Path, report: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")


def versions() -> dict[str, str]:
    import botorch
    import gpytorch
    import optuna
    import scipy
    import torch

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        "gpytorch": gpytorch.__version__,
        "botorch": botorch.__version__,
        "optuna": optuna.__version__,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path("bench/results/quality-runs.jsonl"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--report-only", action="store_true", help="summarise cached runs, compute none"
    )
    args = parser.parse_args(argv)
    problems = args.problems.split(",")
    samplers = args.samplers.split(",")
    seeds = list(range(args.seeds))
    out = args.out or Path(f"bench/results/quality-{datetime.now(UTC):%Y%m%d}")

    done: dict[tuple, dict] = {}
    if args.cache.exists():
        for line in args.cache.read_text().splitlines():
            run = json.loads(line)
            run["version"] = _cached_version(run)
            done[_key(run)] = run
    tasks: list[tuple] = []
    for block in range(0, len(seeds), SEED_BLOCK):
        headline: list[tuple] = []
        secondary: list[tuple] = []
        for seed in seeds[block : block + SEED_BLOCK]:  # seed-major within a block
            for problem in problems:
                for kind in samplers:
                    if kind == "ladder-auto":
                        continue  # identical to its delegate's run; see auto_runs
                    task = (problem, kind, seed, args.budget, args.workers, True)
                    (secondary if is_secondary(problem, kind) else headline).append(task)
                if problem == SPREAD_PROBLEM:
                    for kind in sorted(set(SPREAD_SAMPLERS) & set(samplers)):
                        secondary.append((problem, kind, seed, args.budget, args.workers, False))
        # Headline runs of a block's seeds first: on a busy machine an interrupted
        # run still has the most seeds where the comparisons are made.
        tasks += headline + secondary
    versions_now = {kind: sampler_version(kind) for kind in SAMPLERS}
    keys = [(*task, versions_now[task[1]]) for task in tasks]
    todo = [task for task, key in zip(tasks, keys, strict=True) if key not in done]
    if args.report_only:
        todo = []
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool, args.cache.open("a") as cache:
        for run in pool.map(_task, todo):
            done[_key(run)] = run
            cache.write(json.dumps(run) + "\n")
            cache.flush()
            print(
                f"{time.time() - started:7.0f}s {run['problem']:12s} {run['sampler']:12s} "
                f"seed {run['seed']:2d} pending={run['pending']!s:5s} "
                f"regret {run['regret'][-1]:.4g}",
                flush=True,
            )
    # With --report-only (or after an interrupted run) cells may have fewer
    # seeds; each cell's "seeds" list in the JSON says which.
    runs = [done[key] for key in keys if key in done]
    if "ladder-auto" in samplers:
        runs += auto_runs(runs)
    summary = summarize(runs, seeds, problems)
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "jobs": args.jobs,
            "torch_threads": int(os.environ["LADDER_TORCH_THREADS"]),
        },
        "versions": versions(),
        "settings": {
            "seeds": seeds,
            "budget": args.budget,
            "workers": args.workers,
            "durations": "exponential, mean 1, per seed",
            "random_reference_evals": RANDOM_REFERENCE_EVALS,
            "ladder_auto": "relabelled run of the sampler AUTO picks (identical draws)",
            "optuna": "TPESampler(multivariate=True, seed) and GPSampler(seed), ask/tell, "
            "pending trials left RUNNING",
            "suggest_seconds": "wall time per ask, measured inside each run; cached runs keep "
            "the time of the machine load they ran under, so compare asks only within a run "
            "batch (load average at report time below)",
            "load_average_1m_at_report": os.getloadavg()[0],
            "sampler_versions": {kind: sampler_version(kind) for kind in SAMPLERS},
        },
        "problems": summary,
    }
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    plot(summary, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
